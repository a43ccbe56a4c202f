"""Handlers: one async function per command type, ``(command, context) -> Completed``.

They raise ``handlers.errors`` and never ack, publish or read the environment. The table from
``type`` to handler (with what else each type is) is ``service.messages.kinds.KINDS``.
"""
