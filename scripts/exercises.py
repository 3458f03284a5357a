#!/usr/bin/env python3
"""Writes exercises/: each topic with the lines that carry its protection left for the learner.

In a topic's lesson, the protection the topic teaches sits between two comments:

    // exercise begins: <what to write, one line>
    ...the lines...
    // exercise ends

`exercises/<topic>/` is a copy of `examples/<topic>/` in which each such region becomes

    // EXERCISE: <what to write>
    // Check it with `scripts/exercise.sh <topic>`; `scripts/exercise.sh <topic> hint` helps.
    <the unsolved lines of UNSOLVED below, if any: code that builds and shows the failure>
    // END OF EXERCISE

and whose Cargo.toml names the package `exercise-<topic>` with one example of that name.
Putting the region back gives the example byte for byte, so the solution is the example.

    python3 scripts/exercises.py            # (re)write exercises/
    python3 scripts/exercises.py --out DIR  # write them into DIR instead (the test compares)

Adding a topic's exercise: mark one region (or two) in its lesson, optionally give it a hint
and unsolved lines below, and run this script.
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BEGIN = re.compile(r"^(?P<indent>[ \t]*)// exercise begins: (?P<task>.+)$")
END = re.compile(r"^[ \t]*// exercise ends$")

# What stands in the region's place while it is unsolved, per topic (and per region, in
# file order, when a topic has two). Code that builds and shows the failure the protection
# prevents; nothing at all when leaving the lines out already does; `todo!()` only where
# nothing else builds. Written as rustfmt writes it: `cargo fmt --all` formats exercises/ too.
UNSOLVED: dict[str, list[str]] = {
    "round-robin": ["Ok(nodes[0].clone()) // every call to the first node"],
    "retry": ["Code::Unknown | Code::Aborted => true, // retried, whatever the call does"],
    "sharding": ["crc32_modulo(user, nodes) // go-micro's choice"],
    "broker": [
        "// Every member gets the message, as if there were no group.\n"
        "for member in &group.members {\n    let _ = offer(member, message.clone());\n}"
    ],
    "pubsub": ["let subscription = broker.subscribe(E::TOPIC, None).await?; // never grouped"],
    "secure": ["let builder = builder.with_no_client_auth(); // any client, certificate or not"],
    "wrapper": ["let verdict: Result<(), Refusal> = Ok(()); // every call let through"],
    "health": ["let healthy = known.values(); // every listed node, whatever its health"],
    "event": ["memory.cursors.insert(name.to_owned(), end); // every start at the end"],
    "mocking": ["let reply = self.greeter.say_hello(guest).await;"],
    "proxy": ['let rotation = self.rotation("greeter.v1.Greeter").await?; // one service for all'],
    "api": ["let _ = reopens; // no pause: an open breaker tries the next call at once"],
    "sidecar": ["let token: Option<String> = None; // anyone joins any service"],
    "transport": [
        'let _ = (node, payload);\nErr(Refusal { code: 501, reason: "not written yet".into() })'
    ],
    "web": ["let path = path_and_query; // the service's name left on the path"],
}

# The hint `scripts/exercise.sh <topic> hint` prints; a topic without one gets `DEFAULT_HINT`.
HINTS: dict[str, str] = {
    "registry": "The heartbeat task wakes every third of the TTL. A lease lasts one TTL from "
    "its last registration, so each tick has to register the node again "
    "(`reg.register(&beat_node, ttl)`); log a failure and keep beating: one missed beat is "
    "survived.",
    "metadata": "An interceptor gets the request before it is sent: `request.metadata_mut()`. "
    "Text values go in with `insert` under a lower-case key and must be printable ASCII "
    "(`ascii(...)`); raw bytes go in with `insert_bin` under a key ending in `-bin`. Count "
    "the calls with `self.calls` to number the request id: req-1, req-2...",
    "wrapper": "Read `authorization` from `request.metadata()`: no header is `NoToken`, a "
    "value that is not text is `Unreadable`, `Bearer <TOKEN>` is `Ok(())`, another bearer "
    "token is `WrongToken`, anything else `NoToken`.",
    "stream": "The request stream is a channel: its end is the half-close. Drop the sender "
    "(`to_server`); the receiving half stays open, so the loop below still reads until the "
    "server ends its side. Without it, the server waits for more names until the deadline.",
    "shutdown": "After the heartbeat has stopped, remove the node from the registry "
    "(`registry.deregister(SERVICE, &node.id)`), within `REGISTRY_TIMEOUT`: clients must stop "
    "picking the node before the listener closes, or their calls find a closed door.",
    "waitgroup": "`TaskTracker::wait()` returns once the tracker is closed *and* empty. "
    "Close it when the drain starts (`self.tracker.close()`), or the drain waits out its "
    "whole deadline and cuts calls that had finished their work.",
    "broker": "A queue group hands each message to one member: take `group.next` modulo the "
    "number of members, `offer` it there, and move `next` on. A full member loses the "
    "message (count the drop); a member that has gone (`Delivery::Gone`) is removed and the "
    "message offered to the one that slides into its place.",
    "pubsub": "A handler registered with a queue name is one instance of a service: the "
    "instances share the topic's events, each event going to one of them. Pass `queue` on "
    "to `broker.subscribe`; with `None` every instance gets every event, and a charge is "
    "made once per instance.",
    "event": "The memory stream keeps a cursor per consumer name. A name seen before keeps "
    "its cursor (it resumes after its last acknowledged event); only a new name starts at "
    "the end: `entry(name).or_insert(end)`.",
    "round-robin": "One counter for the client's life: `self.next.fetch_add(1, ...)` gives "
    "this call's turn; the node is `nodes[turn % nodes.len()]`. The list is the live nodes, "
    "sorted by id, so every client rotates the same way.",
    "health": "The health watchers report `Some(true)` (SERVING), `Some(false)` "
    "(NOT_SERVING) or nothing yet (`None`). Only a node that said SERVING takes calls: "
    "filter on `*s == Some(true)`.",
    "sharding": "Rendezvous hashing: score every node for the user with `score(user, "
    "&node.id)` and keep the highest (`max_by_key`). A new node takes only the users it "
    "now outscores everyone for.",
    "retry": "`Unknown` and `Aborted` may come after the node did the work and only the reply "
    "was lost. Sending the call again is then safe only when doing it twice is harmless: "
    "answer with the call's `idempotent` flag.",
    "web": "The gateway's path is `/<service>/<rest>`; the node knows only `/<rest>`. Find "
    "the first `/` after the leading one and keep what follows it, or `/` when there is "
    "none. Slice the raw `path_and_query`: decoding it would turn `%3F` into a query.",
    "redirect": "A target that is an https URL must name a host on the list: lower-case the "
    "authority and look it up in `self.hosts`; when it is not there, refuse with "
    "`host \"...\" is not on the allow-list`.",
    "sidecar": "The holder of a service is its first registrant. Ask `sidecar.held` to "
    "`admit` the node: it is given the service and id, the TTL, the bearer token from the "
    "headers (`owners::bearer`) and the ids listed now; it answers a new token for a new "
    "service, or refuses.",
    "api": "While the breaker is open and `now` is before `reopens`, the call must not reach "
    "the service: return the refusal, `Err` with how long is left, and no transition.",
    "proxy": "The path is `/<service>/<method>`: `route(&path)` gave you `service`. The "
    "rotation to pick a node from is that service's: `self.rotation(service)`.",
    "tunnel": "The header says the frame's kind before any payload arrives. The kinds run "
    "from `OPEN` to `CLOSE`; any other byte is `FrameError::UnknownKind(kind)`, and the link "
    "is closed at once instead of waiting for a payload a stranger announced.",
    "transport": "Over NATS nothing decodes for you: `HelloRequest::decode(payload)` (a "
    "failure is a 400 refusal naming it), then `say_hello(node, request)?`, then "
    "`encode_to_vec()` into `Bytes`.",
    "secure": "Match on `setup.client_ca`. Without one, plain TLS: "
    "`builder.with_no_client_auth()`. With one, mutual TLS: put the CA's certificate in a "
    "`RootCertStore`, build a `WebPkiClientVerifier` on it with the same provider, and "
    "`builder.with_client_cert_verifier(...)`: the handshake then fails for a client without "
    "a certificate from that CA.",
    "mocking": "The desk retries once on `Unavailable` (a node may have just restarted): "
    "match the first answer; on `Err(status)` with `Code::Unavailable` call `say_hello` "
    "again, otherwise keep the answer.",
    "trace": "The consumer continues the trace only if the message carries the context: "
    "inject the producer span's context (`cx`) into the headers with "
    "`TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut headers))`.",
}


DEFAULT_HINT = (
    "Read the lesson around the exercise, and notes/{topic}.md: it says what these lines "
    "protect against. The answer is the example itself, between `// exercise begins` and "
    "`// exercise ends` in examples/{topic}/."
)


def topics() -> list[str]:
    """Every topic: a package under examples/ with a main.rs."""
    return sorted(p.name for p in (ROOT / "examples").iterdir() if (p / "main.rs").is_file())


def reading_order(names: list[str]) -> list[str]:
    """The topics in the article's reading order (its first link to each note), then any
    topic the article does not list yet, by name."""
    article = (ROOT / "notes" / "README.md").read_text()
    section = article.split("## Reading order", 1)[1]
    order: list[str] = []
    for link in re.findall(r"\]\(([a-z0-9-]+)\.md\)", section):
        if link in names and link not in order:
            order.append(link)
    return order + [n for n in names if n not in order]


def takes_backend(topic: str) -> bool:
    return "BackendArgs" in (ROOT / "examples" / topic / "main.rs").read_text()


def placeholder(topic: str, indent: str, task: str, unsolved: str) -> list[str]:
    lines = [
        f"{indent}// EXERCISE: {task}",
        f"{indent}// Check it with `scripts/exercise.sh {topic}`; "
        f"`scripts/exercise.sh {topic} hint` helps.",
    ]
    lines += [f"{indent}{line}" if line else "" for line in unsolved.splitlines()]
    lines.append(f"{indent}// END OF EXERCISE")
    return lines


def cut(topic: str, text: str, first: int) -> tuple[str, list[str]]:
    """The file with its regions replaced, and their tasks. `first` numbers the regions
    across the topic's files."""
    out: list[str] = []
    tasks: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        begin = BEGIN.match(lines[i])
        if not begin:
            if END.match(lines[i]):
                sys.exit(f"{topic}: `// exercise ends` without a beginning")
            out.append(lines[i])
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]):
                sys.exit(f"{topic}: an exercise begins inside another")
            j += 1
        if j == len(lines):
            sys.exit(f"{topic}: `// exercise begins` without `// exercise ends`")
        unsolved = UNSOLVED.get(topic, [])
        index = first + len(tasks)
        stand_in = unsolved[index] if index < len(unsolved) else ""
        out += placeholder(topic, begin["indent"], begin["task"], stand_in)
        tasks.append(begin["task"])
        i = j + 1
    return "\n".join(out), tasks


def manifest(topic: str, text: str) -> str:
    """The topic's Cargo.toml, for the exercise package: its own name, one example whose
    tests `cargo test --workspace` leaves alone (the unsolved run fails on purpose, and the
    topic's own tests test the example), lints that let an unsolved region leave things
    unused or hold a `todo!()`."""
    crate = topic.replace("-", "_")
    out: list[str] = []
    section = ""
    for line in text.split("\n"):
        header = re.match(r"^\[+([^\]]+)\]+$", line)
        if header:
            section = header[1]
            if section == "example":
                out += [
                    "# Built only with its feature, `exercise`: a build, test or lint of the whole",
                    "# workspace leaves the unsolved exercise alone (scripts/exercise.sh and",
                    "# tests/exercises.rs turn the feature on).",
                    "[features]",
                    "exercise = []",
                    "",
                    "[[example]]",
                    f'name = "exercise-{topic}"',
                    'path = "main.rs"',
                    "test = false",
                    'required-features = ["exercise"]',
                ]
                continue
            if section in ("test", "bench"):
                continue  # the topic's own suites test the example, not the exercise
            if section == "lints":
                out += [
                    "# The workspace's lints, except that an unsolved exercise may leave a",
                    "# variable or a helper unused, or hold a `todo!()`.",
                    "[lints.rust]",
                    'unsafe_code = "forbid"',
                    'missing_debug_implementations = "allow"',
                    'unused = { level = "allow", priority = -1 }',
                    "",
                    "[lints.clippy]",
                    'dbg_macro = "warn"',
                    'todo = "allow"',
                    'unwrap_used = "allow"',
                ]
                continue
            out.append(line)
            if section == "lib":
                out += [f'name = "{crate}"', "test = false", "doctest = false"]
            continue
        if section in ("example", "lints", "test", "bench"):
            if line == "":
                out.append(line)
            continue
        if section == "package" and line.startswith("name = "):
            out.append(f'name = "exercise-{topic}"')
            continue
        if section == "package" and line.startswith("description = "):
            out.append(f'description = "The {topic} example with its key lines left to write"')
            continue
        if section == "lib" and line.startswith("name = "):
            continue
        out.append(line)
    return "\n".join(out)


def generate(out: Path) -> None:
    names = topics()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    order = reading_order(names)
    listing = []
    for topic in order:
        source = ROOT / "examples" / topic
        target = out / topic
        tasks: list[str] = []
        for path in sorted(source.rglob("*")):
            if path.is_dir():
                continue
            relative = path.relative_to(source)
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            if path.name == "Cargo.toml" and relative.parent == Path("."):
                (target / relative).write_text(manifest(topic, path.read_text()))
            elif path.suffix == ".rs":
                text, found = cut(topic, path.read_text(), len(tasks))
                tasks += [f"{relative}: {task}" for task in found]
                (target / relative).write_text(text)
            else:
                shutil.copyfile(path, target / relative)
        if not tasks:
            sys.exit(f"{topic}: no `// exercise begins:` region in examples/{topic}/")
        hint = HINTS.get(topic, DEFAULT_HINT.format(topic=topic))
        (target / "hint.txt").write_text(hint.strip() + "\n")
        listing.append(f"{topic}\t{'memory' if takes_backend(topic) else '-'}\t{len(tasks)}")
        for task in tasks:
            listing.append(f"\t{task}")
    header = [
        "# Generated by scripts/exercises.py: the exercises in reading order.",
        "# topic, backend the check runs on ('-': the topic takes none), regions; then each task.",
    ]
    (out / "exercises.txt").write_text("\n".join(header + listing) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "exercises")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
