"""The BSS sandbox: a stateful simulator of the Huawei Cloud BSS partner API and IAM assume_role.

See ``docs/sandbox.md``. Public surface: ``SandboxServer`` (async context manager), ``serve`` and
``register_cli`` (the ``bss-relay sandbox`` verb).
"""

from service.sandbox.server import SandboxServer, register_cli, serve

__all__ = ["SandboxServer", "register_cli", "serve"]
