#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (run from anywhere; idempotent).

Seeds are small valid inputs from the docs, examples and catalogue, plus a few edge cases, so
the fuzzers start from the shapes the parsers really see. Seeds are named `seed-*`; files the
fuzzers add to a corpus dir while running are not committed (see docs/fuzzing.md).
"""
import base64
import hashlib
import hmac
import json
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


# --- client frames: every request example in docs/protocol.md, plus edge cases -------------
frames = re.findall(r'^(\{"id".*\})\s*$', (ROOT / "docs/protocol.md").read_text(), re.M)
frames += [
    '{"id":"abc","op":"publish","room":"lobby/1","data":[1,2.5e3,null,true,{"a":"\\u00e9"}]}',
    '{"id":12,"op":"state_set","room":"r","key":"k","value":[[[[[[[[[[1]]]]]]]]]]}',
    '{"id":13,"op":"publish","room":"r","data":"\\ud800"}',
    '{"id":14,"op":"members","room":"r","after":"bob","limit":4294967295}',
    '[1,"join","lobby"]',
    '[1,"join",null,null,"lobby",null,null,null,null,null,null,null,null,null]',
]
for i, frame in enumerate(frames):
    write("request_parse", f"{i:02}", frame)
    if '"data"' in frame or '"value"' in frame:
        write("client_json", f"{i:02}", frame)

# --- tokens (target token_verify; secret as in fuzz_targets/token_verify.rs) ---------------
SECRET = b"fuzz-secret-0123456789"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims, secret=SECRET, header=None):
    header = header or {"alg": "HS256", "typ": "JWT"}
    msg = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, msg.encode(), hashlib.sha256).digest()
    return f"{msg}.{b64(sig)}"


good = {"sub": "alice", "exp": 4102444800, "rooms": [{"pattern": "lobby/*", "publish": True},
                                                       {"pattern": "stage"}]}
write("token_verify", "valid", b"\x00" + token(good).encode())
write("token_verify", "expired", b"\x00" + token({**good, "exp": 1}).encode())
write("token_verify", "wrong-key", b"\x00" + token(good, secret=b"other").encode())
write("token_verify", "alg-none", b"\x00" + token(good, header={"alg": "none"}).rsplit(".", 1)[0].encode() + b".")
for name, claims in {
    "claims": good,
    "claims-bad-sub": {**good, "sub": "a b/c"},
    "claims-extra": {**good, "nbf": 5, "dm": True},
    "claims-no-rooms": {"sub": "bob", "exp": 4102444800},
}.items():
    write("token_verify", name, b"\x01" + json.dumps(claims).encode())


# --- relay frames: postcard by hand (varints, length-prefixed strings, enum index) ---------
def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return varint(len(data)) + data


def opt(value):
    return b"\x00" if value is None else b"\x01" + value


def seq(items):
    return varint(len(items)) + b"".join(items)


hlc = varint(1_700_000_000_000) + varint(3)
position = varint(7) + varint(41)
event_head = s("lobby") + s("us-east") + varint(7) + varint(42) + varint(41) + hlc
relay = {
    "hello": varint(0) + s("eu-central") + varint(1) + s("relay-a") + varint(9),
    "interest": varint(1) + s("lobby") + b"\x01" + opt(position),
    "interest-snapshot": varint(2) + seq([s("lobby") + opt(position), s("stage") + opt(None)]),
    "event-join": varint(3) + event_head + varint(0) + s("bob"),
    "event-leave": varint(3) + event_head + varint(1) + s("bob") + s("node_lost"),
    "event-message": varint(3) + event_head + varint(2) + s("bob") + s(b'{"text":"hi"}') + opt(s("k1")),
    "event-state-set": varint(3) + event_head + varint(3) + s("topic") + s(b'"launch"') + s("bob"),
    "event-state-delete": varint(3) + event_head + varint(4) + s("topic") + s("bob"),
    "event-snapshot": varint(3) + event_head + varint(5) + seq([s("bob") + hlc])
    + seq([s("topic") + opt(s(b'"x"')) + hlc + s("us-east") + s("bob")]),
    "direct": varint(4) + s("bob") + s("alice") + s(b'{"kind":"offer"}'),
    "presence": varint(5) + b"\x01" + seq([s("alice"), s("bob")]) + seq([s("carol")]),
    "ping": varint(6) + varint(123456789),
    "pong": varint(7) + varint(123456789),
}
for name, payload in relay.items():
    write("relay_frame", name, payload)


# --- DNS: selector (bit 0: IPv6) + source address + request packet ------------------------
def qname(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def query(name, qtype, ident=0x1234, flags=0x0100, opt_rr=None):
    header = struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 1 if opt_rr is not None else 0)
    body = qname(name) + struct.pack(">HH", qtype, 1)
    return header + body + (opt_rr or b"")


def opt_record(payload=1232, do=False, options=b""):
    return b"\x00" + struct.pack(">HHBBHH", 41, payload, 0, 0, 0x8000 if do else 0, len(options)) + options


def ecs(family, source, address):
    data = struct.pack(">HBB", family, source, 0) + address
    return struct.pack(">HH", 8, len(data)) + data


V4 = b"\x00" + bytes([198, 51, 100, 7])
V6 = b"\x01" + bytes.fromhex("20010db800e000000000000000000001")
A, AAAA, NS, SOA, ANY, TXT = 1, 28, 2, 6, 255, 16
dns = {
    "ws-a": V4 + query("ws.mesh.example.net.", A),
    "ws-aaaa-v6": V6 + query("WS.Mesh.Example.NET.", AAAA),
    "ws-edns": V4 + query("ws.mesh.example.net.", A, opt_rr=opt_record(do=True)),
    "ws-ecs-v4": V4 + query("ws.mesh.example.net.", A, opt_rr=opt_record(options=ecs(1, 24, bytes([203, 0, 113])))),
    "ws-ecs-v6": V4 + query("ws.mesh.example.net.", AAAA, opt_rr=opt_record(options=ecs(2, 48, bytes.fromhex("20010db800e0")))),
    "ws-ecs-zero": V6 + query("ws.mesh.example.net.", A, opt_rr=opt_record(payload=512, options=ecs(1, 0, b""))),
    "ws-ecs-bad": V4 + query("ws.mesh.example.net.", A, opt_rr=opt_record(options=ecs(1, 20, bytes([10, 0, 255])))),
    "ws-big": b"\x00" + bytes([4, 0, 0, 1]) + query("ws.mesh.example.net.", A),
    "region": V4 + query("eu.mesh.example.net.", A),
    "apex-soa": V4 + query("mesh.example.net.", SOA),
    "apex-ns": V4 + query("mesh.example.net.", NS, opt_rr=opt_record()),
    "any": V4 + query("ws.mesh.example.net.", ANY),
    "txt": V4 + query("ws.mesh.example.net.", TXT),
    "nxdomain": V4 + query("a.b.mesh.example.net.", A),
    "refused": V4 + query("example.org.", A),
    "notimp": V4 + query("ws.mesh.example.net.", A, flags=0x2800),
    "badvers": V4 + query("ws.mesh.example.net.", A, opt_rr=b"\x00" + struct.pack(">HHBBHH", 41, 1232, 0, 1, 0, 0)),
}
for name, packet in dns.items():
    write("dns_answer", name, packet)

# --- catalogue and configs: the committed files -------------------------------------------
for path in sorted((ROOT / "regions").glob("*.toml")):
    write("catalogue_parse", path.stem, path.read_bytes())
write("config_node", "example", (ROOT / "examples/node.toml").read_bytes())
write("config_router", "example", (ROOT / "examples/geo-router.toml").read_bytes())
write("config_relay", "example", (ROOT / "crates/interregion-relay/relay.example.toml").read_bytes())
write("config_node", "minimal", 'region = "eu-central"\ntoken_secret = "0123456789abcdef"\n[store]\nkind = "memory"\n')


# --- libFuzzer dictionaries (fuzz/dict/<target>.dict; scripts/fuzz.sh passes them) ---------
def fields(*paths):
    out = set()
    for p in paths:
        t = (ROOT / p).read_text()
        out |= set(re.findall(r"^\s*pub ([a-z_][a-z0-9_]*):", t, re.M))
        out |= set(re.findall(r'rename = "([^"]+)"', t))
    return sorted(out)


def dictionary(target, words):
    def entry(word):
        return "".join(
            c if 0x20 <= ord(c) < 0x7F and c not in '\\"' else "".join(f"\\x{b:02x}" for b in c.encode())
            for c in word
        )
    d = ROOT / "fuzz" / "dict"
    d.mkdir(exist_ok=True)
    body = "\n".join(f'"{entry(w)}"' for w in words)
    (d / f"{target}.dict").write_text(f"# libFuzzer dictionary, written by fuzz/make_corpus.py\n{body}\n")


TOML = ["=", "[", "]", "[[", "]]", "{", "}", '"', "'''", '"""', "true", "false", "1e400", "inf", "nan",
        "-0", "0x", "1979-05-27T07:32:00Z", "\n", "#"]
dictionary("config_node", fields("crates/region-node/src/config.rs") + TOML
           + ["memory", "redis", "sentinel", "redis://127.0.0.1:6379/"])
dictionary("config_router", fields("crates/geo-router/src/config.rs") + TOML
           + ["mesh.example.net.", "10.0.0.0/8", "::/0"])
dictionary("config_relay", fields("crates/interregion-relay/src/config.rs") + TOML + ["127.0.0.1:4433"])
dictionary("catalogue_parse", fields("crates/catalogue/src/lib.rs") + TOML
           + ["ws://", "wss://", "http://", "https://", "aws", "gcp", "local"])
JSON = ["{", "}", "[", "]", ":", ",", '"', "\\u", "\\ud800", "\\udc00", "null", "true", "false", "-0",
        "1e309", "Infinity", "NaN"]
OPS = ["hello", "join", "leave", "publish", "send", "members", "presence", "state_set", "state_get",
       "state_delete", "ping"]
KEYS = [f'"{k}"' for k in ["id", "op", "room", "data", "to", "users", "key", "value", "if_version",
                            "after", "limit", "token", "resume", "epoch", "seq", "origins", "region",
                            "idempotency_key"]]
dictionary("request_parse", JSON + OPS + KEYS)
dictionary("client_json", JSON + OPS + KEYS)
dictionary("token_verify", JSON + ['"sub"', '"exp"', '"rooms"', '"pattern"', '"publish"', '"nbf"', '"iat"',
                                   '"alg"', "HS256", "none", ".", "eyJ"])
