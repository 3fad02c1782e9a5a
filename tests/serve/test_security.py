"""A server you can expose: tokens, TLS, limits, and hostile input that ends at most its own request."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from lightning_split import SplitStrategy
from lightning_split.transport import messages, wire
from lightning_split.transport.client import ConnectionFailed, RemoteServer
from lightning_split.transport.protocol import RemoteError, encode_request
from tests.helpers import ServeProcess, assert_same_parameters, fit_pair, open_session, trainer
from tests.models import DagNet, loader


def self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, made here (no network, no openssl CLI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lightning-split test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


@pytest.mark.slow
def test_tls_with_a_self_signed_certificate_and_token_from_the_environment(tmp_path):
    cert, key = self_signed(tmp_path)
    server = ServeProcess(
        "--model", "tests.models:DagNet", "--certfile", cert, "--keyfile", key,
        env={"LIGHTNING_SPLIT_TOKEN": "from-env"},
    )  # fmt: skip
    try:
        assert server.url.startswith("wss://127.0.0.1:")
        with pytest.raises(ConnectionFailed, match=r"TLS handshake .*ca_file"):
            RemoteServer(server.url, token="from-env").connect()
        with pytest.raises(ConnectionFailed, match="HTTP 401"):
            RemoteServer(server.url, token="wrong", ca_file=cert).connect()
        local, _, _ = fit_pair({"optimizer": "sgd"}, {"max_steps": 6}, server=None)
        torch.manual_seed(0)
        secure = DagNet(optimizer="sgd")
        torch.manual_seed(1)
        trainer(SplitStrategy(server=server.url, cut="b", token="from-env", ca_file=cert), max_steps=6).fit(
            secure, loader()
        )
        assert_same_parameters(local, secure)
    finally:
        server.stop()


def test_wrong_and_missing_tokens_get_401_before_anything_runs(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = ServeProcess("--model", "tests.models:DagNet", "--token-file", str(token_file))
    try:
        for headers in (None, {"Authorization": "Bearer s3cre"}, {"Authorization": "Bearer s3cret2"}, {"X": "s3cret"}):
            with pytest.raises(InvalidStatus) as info:
                connect(server.url, proxy=None, additional_headers=headers)
            assert info.value.response.status_code == 401
        with connect(server.url, proxy=None, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send(encode_request(0, [messages.Ping(payload=None, reply_bytes=3)]))
            assert wire.decode(ws.recv(timeout=10))["results"][0]["payload"].numel() == 3
    finally:
        server.stop()


def test_values_are_checked_against_the_plan_and_a_bad_request_ends_only_itself(dagnet_server):
    runtime, images, cut_shapes = open_session(dagnet_server.url)
    remote = runtime.remote
    expected = runtime.forward(images)  # a good forward first
    good = [torch.zeros(shape) for shape in cut_shapes]
    wrong_size = (*cut_shapes[0][:-1], cut_shapes[0][-1] + 1)

    def forward(values, requires_grad=None):
        requires_grad = requires_grad if requires_grad is not None else [False] * len(values)
        op = {"id": 999, "values": values, "requires_grad": requires_grad, "training": True}
        return remote.call([messages.Forward(**op, grad=False, rng=None)])

    assert forward(good)[0].outputs  # the good values pass the checks
    bad_cases = {
        "expected a tensor": [1, 2],
        "expected torch.float32": [good[0].double(), good[1]],
        "rank": [good[0][0], good[1]],
        "expected shape": [torch.zeros(wrong_size), good[1]],
        "cut values, the plan has": [good[0]],
        "requires_grad flags": None,
    }
    for fragment, values in bad_cases.items():
        with pytest.raises(RemoteError, match=fragment):
            if values is None:
                forward(good, requires_grad=[False])
            else:
                forward(values)
    with pytest.raises(RemoteError, match="floating-point"):
        remote.call([messages.Backward(id=0, grads=[torch.zeros(32, 10, dtype=torch.int64)])])
    with pytest.raises(RemoteError, match="optimizer index 7 out of range"):
        remote.call([messages.GradNorms(optimizer=7, norm_type=2.0)])
    again = runtime.forward(images)  # the session still serves, with the same results
    torch.testing.assert_close(again, expected)
    runtime.close()


def test_max_sessions_and_message_size_limits():
    server = ServeProcess("--model", "tests.models:DagNet", "--max-sessions", "1", "--max-message-mb", "1")
    try:
        first, images, _ = open_session(server.url)
        with pytest.raises(RemoteError, match=r"maximum.*--max-sessions"):
            open_session(server.url)
        with connect(server.url, proxy=None, compression=None) as ws:
            ws.send(b"\x00" * (2 * 2**20))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009  # message too big
        first.forward(images)  # the open session is untouched
        first.close()
        second, images, _ = open_session(server.url)  # closing freed the slot
        second.close()
    finally:
        server.stop()
