"""An in-process exchange for transfer tests: a test PKI, a signed directory, three
organisations on one database (organisation scoping keeps them apart) and a relay that hands
messages over by function call, so a test can step through a transfer and tamper on the way.

The real relay, over mutual TLS in its own process, is tested in test_exchange_relay.py and
end to end in test_transfer_e2e.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ekd.errors import FhirError
from ekd.exchange import pki as pki_module
from ekd.exchange.directory import Directory, DirectoryEntry
from ekd.interaction.base import FhirRequest, Services
from ekd.interaction.transaction import process
from ekd.jgz import demo
from ekd.security.principal import Principal, Role
from ekd.security.scopes import parse_scopes
from ekd.transfer import inbox, worker
from ekd.transfer.context import Exchange, RelayUnavailable

THUISZORG, GGD, OTHER, RELAY = "11110001", "22220002", "33330003", "99990009"
BASE = "http://testserver/fhir"


def principal(org: str, role: Role = Role.JEUGDARTS) -> Principal:
    return Principal(org=org, client_id="test", role=role, user_id="900011111",
                     user_name="Dr. Test", scopes=parse_scopes("user/*.cruds"))


@dataclass
class Message:
    sender: str
    body: dict
    #: The recipient's answer (JSON) or the error it raised.
    answer: dict | None = None
    error: FhirError | None = None


@dataclass
class LocalRelay:
    """Store and forward by function call. `down` makes it unreachable; `tamper` may change a
    message (a dict as the sender posted it) before it is delivered."""

    orgs: dict[str, Services] = field(default_factory=dict)
    queue: list[Message] = field(default_factory=list)
    log: list[Message] = field(default_factory=list)
    down: bool = False
    tamper: Callable[[Message], None] | None = None

    def accept(self, sender: str, message: dict) -> dict:
        if self.down:
            raise RelayUnavailable("relay unreachable: test")
        self.queue.append(Message(sender, dict(message)))
        return {"id": message["id"], "status": "stored"}

    def deliver_all(self) -> int:
        done = 0
        while self.queue:
            message = self.queue.pop(0)
            if self.tamper is not None:
                self.tamper(message)
            self.deliver(message)
            done += 1
        return done

    def deliver(self, message: Message) -> None:
        body = message.body
        target = self.orgs[body["recipient"]]
        assert target.exchange is not None
        delivery = inbox.Delivery(sender=message.sender, message_id=body["id"],
                                  kind=body["kind"], transfer_id=body["transfer"],
                                  body=body["body"].encode())
        try:
            message.answer = inbox.receive(target, target.exchange, delivery)
        except FhirError as exc:
            message.error = exc
        self.log.append(message)
        if message.answer and "receipt" in message.answer:
            # The relay hands the technical receipt back to the sender as a message.
            self.queue.append(Message(body["recipient"], {
                "id": f"receipt-{body['id']}", "recipient": message.sender, "kind": "receipt",
                "transfer": body["transfer"], "body": message.answer["receipt"]}))


@dataclass
class World:
    pki: pki_module.Pki
    directory: Directory
    relay: LocalRelay
    orgs: dict[str, Services]

    def pump(self, rounds: int = 20) -> None:
        """Run every organisation's worker and the relay until nothing moves."""
        for _ in range(rounds):
            moved = self.relay.deliver_all()
            for services in self.orgs.values():
                assert services.exchange is not None
                moved += worker.run_once(services, services.exchange)
            if not moved:
                return

    def load_child(self, org: str, index: int = 0, *, seed: int = 7) -> dict:
        """A demo child stored at `org`; the transaction response."""
        services = self.orgs[org]
        process(services, FhirRequest(method="POST", base=BASE, body=demo.shared_bundle(),
                                      principal=principal(org)))
        bundle = next(b for i, b in enumerate(demo.generate(index + 1, seed=seed))
                      if i == index)
        return process(services, FhirRequest(method="POST", base=BASE, body=bundle,
                                             principal=principal(org))).body or {}


def build_world(services: Services, folder: Path, *, key_type: str = "ec") -> World:
    """Three organisations (a thuiszorg, a GGD, another) on `services`' database."""
    pki = pki_module.init(folder / "pki", key_type=key_type)  # type: ignore[arg-type]
    directory = Directory.init(folder / "directory")
    relay = LocalRelay()
    orgs: dict[str, Services] = {}
    names = {THUISZORG: "Thuiszorg Test", GGD: "GGD Test", OTHER: "GGD Elders",
             RELAY: "Landelijk schakelpunt (test)"}
    for ura, name in names.items():
        issued = pki.issue(ura, name, key_type=key_type)  # type: ignore[arg-type]
        directory.add(DirectoryEntry(
            ura=ura, name=name, endpoint=f"https://{ura}.jgz.test", certificate=issued.cert,
            postcodes=((1000, 1999),) if ura == GGD else ((2000, 2999),) if ura == OTHER
            else (), role="relay" if ura == RELAY else "organisation"))
    for ura in (THUISZORG, GGD, OTHER):
        settings = dataclasses.replace(
            services.settings, jgz_enforce=True,
            exchange_cert=str(pki.folder / f"{ura}.pem"),
            exchange_key=str(pki.folder / f"{ura}.key"),
            exchange_chain=str(pki.chain_path), exchange_root=str(pki.folder / "root.pem"),
            exchange_crl=str(pki.crl_path), exchange_relay="https://relay.jgz.test",
            exchange_relay_ura=RELAY, exchange_directory=str(folder / "directory"),
            exchange_retry_base=0.0, exchange_max_attempts=3)
        exchange = Exchange.from_settings(settings)
        assert exchange is not None
        exchange.post_message = (  # type: ignore[method-assign]
            lambda message, _ura=ura: relay.accept(_ura, message))
        orgs[ura] = dataclasses.replace(services, settings=settings, exchange=exchange)
    relay.orgs = orgs
    return World(pki, directory, relay, orgs)


def make_world(url: str, folder: Path) -> World:
    """A world on a fresh database at `url` (migrated here), JGZ profiles enforced: for the
    benchmark scripts, which run outside pytest's fixtures."""
    from ekd.api.app import build_services
    from ekd.config import Settings
    from ekd.store.database import Database

    db = Database(url)
    db.upgrade()
    settings = Settings(database_url=url, base_url=BASE, jgz_enforce=True,
                        key_dir=str(folder / "keys"))
    return build_world(build_services(settings, db), folder)
