"""The container files say what the server accepts."""

from pathlib import Path

import yaml

from server.config import build_parser

REPO = Path(__file__).resolve().parent.parent


def test_compose_command_is_a_valid_server_command_line():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["dataserver"]
    args = build_parser().parse_args(service["command"])
    assert args.source.startswith("lmdb:/data/") and args.bind == ["tcp://*:5555"]
    assert any(volume.endswith(":/data:ro") for volume in service["volumes"])
    assert service["build"]["dockerfile"] == "deploy/server.Dockerfile"


def test_server_image_runs_the_server_module_as_a_non_root_user():
    lines = (REPO / "deploy" / "server.Dockerfile").read_text().splitlines()
    assert 'ENTRYPOINT ["python", "-m", "server"]' in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] != "root"
    for copied in ("requirements.txt", "server", "client_layer"):
        assert (REPO / copied).exists()
