"""seamless-upgrade on the system bus: org.seamlesssystemd.Upgrade1 (dbus-fast, bus-activated).

The CLI stays the front door; both call the same code and speak the same
JSON. Methods, on /org/seamlesssystemd/Upgrade1:

    Plan(s kernel) -> s       the plan, as 'seamless-upgrade plan --json' prints it
    Arm(s kernel) -> s        the armed generation
    Run(s kernel) -> s        the generation; the machine then kexecs
    Disarm() -> ()
    Status() -> s             as 'status --json'
    Report() -> s             as 'report --json'
    signal Progress(s phase, s unit, s text, t bytes)   while Plan, Arm or Run work

An empty KERNEL means the configured or newest kernel. Plan, Arm, Run and
Disarm are allowed to whom polkit allows the action
org.seamlesssystemd.upgrade.manage (administrators; root always), or, where
polkit is not running, to root only; Status and Report to anyone. A refusal
is the error org.seamlesssystemd.Upgrade1.Refused with plan's reasons, one per
line; an invalid configuration .ConfigInvalid; another upgrade at work .Busy;
any other failure .Failed with the CLI's message.

The service runs as seamless-dbus.service (Type=dbus) when a call
activates it, and leaves once nothing has been asked for a minute.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from seamless_systemd import config, progress, status, upgrade
from seamless_systemd.errors import ConfigError, LockedError, PreflightError, SeamlessError
from seamless_systemd.log import log

NAME = "org.seamlesssystemd.Upgrade1"
PATH = "/org/seamlesssystemd/Upgrade1"
INTERFACE = NAME
ACTION = "org.seamlesssystemd.upgrade.manage"
IDLE_SECONDS = 60.0
# Mutating, or showing the services' processes: the polkit action's.
GUARDED = {"Plan", "Arm", "Run", "Disarm"}
# Each method's arguments in and out (name, type).
METHODS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "Plan": ((("kernel", "s"),), (("plan", "s"),)),
    "Arm": ((("kernel", "s"),), (("generation", "s"),)),
    "Run": ((("kernel", "s"),), (("generation", "s"),)),
    "Disarm": ((), ()),
    "Status": ((), (("status", "s"),)),
    "Report": ((), (("report", "s"),)),
}
SIGNATURES = {m: "".join(t for _, t in ins) for m, (ins, _) in METHODS.items()}
PROGRESS = (("phase", "s"), ("unit", "s"), ("text", "s"), ("bytes", "t"))


def introspection() -> str:
    """The object's introspection XML (what 'busctl introspect' shows)."""

    def args(pairs: tuple[tuple[str, str], ...], direction: str) -> str:
        way = f' direction="{direction}"' if direction else ""
        return "".join(f'<arg name="{n}" type="{t}"{way}/>' for n, t in pairs)

    methods = "".join(
        f'  <method name="{m}">{args(ins, "in")}{args(outs, "out")}</method>\n'
        for m, (ins, outs) in METHODS.items()
    )
    return (
        '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node>\n'
        ' <interface name="org.freedesktop.DBus.Introspectable">\n'
        '  <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>\n </interface>\n'
        f' <interface name="{INTERFACE}">\n{methods}'
        f'  <signal name="Progress">{args(PROGRESS, "")}</signal>\n </interface>\n</node>\n'
    )


class Refused(Exception):
    """A D-Bus error reply: NAME and TEXT."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


def error_of(e: BaseException) -> Refused:
    """The D-Bus error for a failure of the shared code."""
    if isinstance(e, Refused):
        return e
    if isinstance(e, PreflightError):
        return Refused(f"{NAME}.Refused", "\n".join(e.problems))
    if isinstance(e, ConfigError):
        return Refused(f"{NAME}.ConfigInvalid", str(e))
    if isinstance(e, LockedError):
        return Refused(f"{NAME}.Busy", str(e))
    if isinstance(e, SeamlessError):
        return Refused(f"{NAME}.Failed", str(e))
    return Refused(f"{NAME}.Failed", f"unexpected error: {e!r}")


def work(member: str, args: list[Any]) -> str:
    """What MEMBER does, with the CLI's code; its JSON or generation as the reply's string."""
    cfg = config.load(config.DEFAULT_DIR)
    kernel = (args[0] or None) if args else None
    if member == "Plan":
        return json.dumps(upgrade.make_plan(cfg, kernel).as_dict(), indent=2)
    if member == "Status":
        return json.dumps(status.data(cfg), indent=2)
    if member == "Report":
        rep = status.last_report()
        if rep is None:
            raise Refused(f"{NAME}.NoReport", "no upgrade report on this machine yet")
        return json.dumps(rep, indent=2)
    with upgrade.lock():
        if member == "Arm":
            return upgrade.arm(cfg, kernel).id
        if member == "Run":
            return upgrade.run_upgrade(cfg, kernel).id
        upgrade.disarm()
        return ""


class Service:
    def __init__(self, bus: Any) -> None:
        from dbus_fast import Message, MessageType

        self.bus = bus
        self.Message = Message
        self.MessageType = MessageType
        self.busy = 0
        self.last = time.monotonic()
        self.loop = asyncio.get_running_loop()

    def handle(self, msg: Any) -> Any:
        """The bus's message handler: our calls are answered from a task; others are not ours."""
        if msg.message_type != self.MessageType.METHOD_CALL or msg.path != PATH:
            return None
        if msg.interface == "org.freedesktop.DBus.Introspectable" and msg.member == "Introspect":
            return self.Message.new_method_return(msg, "s", [introspection()])
        if msg.interface not in (INTERFACE, None) or msg.member not in SIGNATURES:
            return None
        if msg.signature != SIGNATURES[msg.member]:
            want = SIGNATURES[msg.member] or "no arguments"
            return self.Message.new_error(
                msg,
                "org.freedesktop.DBus.Error.InvalidArgs",
                f"{msg.member} takes ({want}), not ({msg.signature})",
            )
        self.busy += 1
        self.last = time.monotonic()
        self.loop.create_task(self.answer(msg))
        return True

    async def answer(self, msg: Any) -> None:
        try:
            if msg.member in GUARDED:
                await self.authorize(msg.sender)
            result = await self.loop.run_in_executor(None, self.call, msg.member, list(msg.body))
            outs = "".join(t for _, t in METHODS[msg.member][1])
            reply = self.Message.new_method_return(msg, outs, [result] if outs else [])
        except BaseException as e:  # every call gets an answer
            err = error_of(e)
            log.info("%s from %s refused: %s", msg.member, msg.sender, err.text)
            reply = self.Message.new_error(msg, err.name, err.text)
        finally:
            self.busy -= 1
            self.last = time.monotonic()
        await self.bus.send(reply)

    def call(self, member: str, args: list[Any]) -> str:
        """MEMBER in a worker thread, its progress steps as signals."""

        def signal(s: progress.Step) -> None:
            sig = self.Message.new_signal(
                PATH, INTERFACE, "Progress", "ssst", [s.phase, s.unit, s.text, s.nbytes or 0]
            )
            self.loop.call_soon_threadsafe(self.bus.send, sig)

        with progress.watched(signal):
            return work(member, args)

    async def authorize(self, sender: str) -> None:
        """Polkit's word on SENDER for ACTION; without polkit on the bus, root only."""
        from dbus_fast import Message, MessageType, Variant

        check = Message(
            destination="org.freedesktop.PolicyKit1",
            path="/org/freedesktop/PolicyKit1/Authority",
            interface="org.freedesktop.PolicyKit1.Authority",
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            # Flag 1: the caller's agent may ask for a password (pkttyagent, a desktop's).
            body=[["system-bus-name", {"name": Variant("s", sender)}], ACTION, {}, 1, ""],
        )
        reply = await self.bus.call(check)
        if reply.message_type == MessageType.METHOD_RETURN:
            authorized, challenge, _ = reply.body[0]
            if authorized:
                return
            raise Refused(
                "org.freedesktop.DBus.Error.AccessDenied"
                if not challenge
                else "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                f"not authorized for {ACTION} (polkit): only administrators may plan, arm, run or disarm",
            )
        if reply.error_name not in (
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
        ):
            raise Refused(
                "org.freedesktop.DBus.Error.AccessDenied", f"polkit could not be asked: {reply.body}"
            )
        who = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionUnixUser",
                signature="s",
                body=[sender],
            )
        )
        if who.message_type != MessageType.METHOD_RETURN or who.body[0] != 0:
            raise Refused("org.freedesktop.DBus.Error.AccessDenied", "only root may plan, arm, run or disarm")

    async def until_idle(self, idle: float) -> None:
        while self.busy or time.monotonic() - self.last < idle:
            await asyncio.sleep(min(idle, 5.0))


async def serve(idle: float = IDLE_SECONDS, bus_factory: Callable[[], Any] | None = None) -> None:
    from dbus_fast import BusType, RequestNameReply
    from dbus_fast.aio.message_bus import MessageBus

    bus = await (bus_factory() if bus_factory else MessageBus(bus_type=BusType.SYSTEM)).connect()
    service = Service(bus)
    bus.add_message_handler(service.handle)
    got = await bus.request_name(NAME)
    if got not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise SeamlessError(f"cannot own {NAME} on the bus ({got.name}): is another seamless-dbus running?")
    log.info("Serving %s", NAME)
    idle_task = asyncio.ensure_future(service.until_idle(idle))
    gone = asyncio.ensure_future(bus.wait_for_disconnect())
    await asyncio.wait([idle_task, gone], return_when=asyncio.FIRST_COMPLETED)
    if gone.done():
        idle_task.cancel()
        log.info("The bus went away; leaving")
        return
    gone.cancel()
    log.info("Nothing asked for %.0f s; leaving (a call starts the service again)", idle)
    bus.disconnect()


def main() -> int:
    asyncio.run(serve())
    return 0
