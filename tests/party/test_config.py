import pytest
import yaml

from collabedit_secure.party.config import ConfigError, load_config
from collabedit_secure.rpc.tls import init_federation_pki


def write(tmp_path, name="p.yaml", **fields):
    base = {"party_id": "alice", "federation_id": "f", "coordinator": "127.0.0.1:7443", "state_dir": "state"}
    base.update(fields)
    path = tmp_path / name
    path.write_text(yaml.safe_dump({k: v for k, v in base.items() if v is not None}))
    return path


def test_minimal_insecure_config_and_defaults(tmp_path):
    config = load_config(write(tmp_path), insecure=True)
    assert (config.listen_host, config.listen_port, config.model, config.c0) == ("127.0.0.1", 0, "default", "embedded")
    assert config.state_dir == tmp_path / "state" and config.min_batch == 1 and not config.auto_start


def test_toml_is_read(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('party_id = "alice"\nfederation_id = "f"\ncoordinator = "h:1"\nstate_dir = "s"\n'
                    'listen = "[::1]:0"\n')
    assert load_config(path, insecure=True).listen_host == "::1"


@pytest.mark.parametrize("fields, message", [
    ({"party_id": None}, "'party_id': is required"),
    ({"party_id": "bad id"}, "'party_id': party id 'bad id' is invalid"),
    ({"listen": "0.0.0.0:5000"}, "not a loopback address"),
    ({"listen": "10.1.2.3:5000"}, "not a loopback address"),
    ({"listen": "nonsense"}, "'listen': must be host:port"),
    ({"coordinator": "nohost"}, "'coordinator': must be host:port"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"min_batch": 0}, "'min_batch': must be a positive integer"),
    ({"he_workers": 0}, "'he_workers': must be a positive integer"),
    ({"device": "cuda:99"}, "'device': device 'cuda:99'"),
    ({"device": "gpu please"}, "'device': device 'gpu please' is not a device"),
    ({"auto_start": "yes"}, "'auto_start': must be true or false"),
    ({"c0": "missing-dir"}, "'c0': must be 'embedded' or a directory"),
    ({"model": "no-such-model"}, "'model': must be 'default' or a local HF model directory"),
    ({"statistics": "random"}, "'statistics': must be 'model' or 'synthetic:<npz path>'"),
    ({"timeouts": {"join": -1}}, "'timeouts.join': must be a positive number"),
])
def test_precise_errors(tmp_path, fields, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, **fields), insecure=True)
    assert message in str(error.value) and str(tmp_path / "p.yaml") in str(error.value)


def test_tls_required_unless_insecure(tmp_path):
    with pytest.raises(ConfigError, match="'tls': is required"):
        load_config(write(tmp_path))


def test_party_id_must_be_the_certificate_name(tmp_path):
    init_federation_pki(tmp_path / "pki", ["alice", "bob"])
    tls = {"ca": "pki/ca.pem", "cert": "pki/bob.pem", "key": "pki/bob.key"}
    with pytest.raises(ConfigError, match="differs from the certificate's common name 'bob'"):
        load_config(write(tmp_path, tls=tls))
    tls = {"ca": "pki/ca.pem", "cert": "pki/alice.pem", "key": "pki/alice.key"}
    assert load_config(write(tmp_path, tls=tls)).tls.cert == tmp_path / "pki" / "alice.pem"


def test_not_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: [1,")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_example_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "parties" / f"{name}.yaml"
    config = load_config(path, check_identity=False)  # certificates are made by `collabedit certs init`
    assert config.party_id == name and config.listen_host == "127.0.0.1" and config.tls.cert.name == f"{name}.pem"


def test_cli_registers_party_run(tmp_path):
    import argparse

    from collabedit_secure.party.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["party", "run", "--config", "p.yaml", "--insecure"])
    assert (args.config, args.insecure, callable(args.handler)) == ("p.yaml", True, True)
