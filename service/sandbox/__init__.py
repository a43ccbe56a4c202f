"""The BSS sandbox: a stateful simulator of the Huawei Cloud BSS partner API and IAM assume_role.

See ``docs/sandbox.md``. Its entry points are in ``service.sandbox.server``: ``SandboxServer``
(an async context manager), ``serve`` and ``register_cli`` (the ``bss-relay sandbox`` verb).
This package module imports nothing, so the sandbox's modules form no import ring through it.
"""
