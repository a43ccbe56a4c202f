"""``bss-relay console``: the operator console, web pages and a JSON API (CONTRACT §10).

* ``users`` — the users file: names, roles, SHA-256 of tokens, constant-time checks;
* ``sessions`` — browser sessions kept server-side, each with its anti-forgery token;
* ``guard`` — the middlewares: who asks, may they, is it forged; security headers; errors;
* ``asks`` — what may be asked, validated alike for the API and the forms;
* ``letters`` — the dead letters: count, newest, one command's, replay; bodies made readable;
* ``actions`` — limits, pauses, replays and ``why`` with the user as the audit's actor;
* ``api`` / ``pages`` — the JSON routes and the HTML pages over the same actions;
* ``templates`` — the Jinja2 pages (autoescaped) and the vendored static files;
* ``app`` / ``server`` / ``cli`` — the aiohttp application, its composition root, the verb.
"""

from service.ops.console.cli import register_cli
from service.ops.console.server import RunningConsole, start_console
from service.ops.console.users import User, Users, UsersFileError

__all__ = ["RunningConsole", "User", "Users", "UsersFileError", "register_cli", "start_console"]
