"""Does nothing and succeeds: the floor of a Python plugin attempt
(instantiate, call, drop), which `sluice bench` measures (W6 Python).
Written against the world's bindings directly, without the SDK."""

from wit_world import exports
from wit_world.exports import handler


class Handler(exports.Handler):
    def run(self, ctx: handler.Context, input: str) -> handler.Outcome:
        return handler.Outcome_Success(handler.Success(output="", next=[]))
