"""Configuration: the documented shape works, errors name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelgate.proxy.config import WILDCARD, ConfigError, load_config, parse_config, zero_config

EXAMPLE = """
server: {host: 127.0.0.1, port: 8080}
providers:
  openai: {adapter: openai, base_url: https://api.openai.com/v1, api_key: "${OPENAI_API_KEY}"}
  local:  {adapter: demo}
models:
  gpt-image-1.5:
    - {provider: openai, model: gpt-image-1.5}
  demo-image:
    - {provider: local}
"""


def test_issue_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "pixelgate.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path, env={"OPENAI_API_KEY": "sk-test"})
    assert config.server.port == 8080
    assert config.providers["openai"].api_key == "sk-test"
    assert config.providers["local"].adapter == "demo"
    assert [d.provider for d in config.models["demo-image"].deployments] == ["local"]
    assert config.models["demo-image"].strategy == "priority"
    # Defaults suited to slow generations, not aiohttp's 300 s total.
    t = config.providers["openai"].timeouts
    assert (t.connect, t.first_byte, t.idle, t.total) == (10.0, 600.0, 300.0, 1800.0)


def test_missing_env_var_names_it(tmp_path: Path) -> None:
    path = tmp_path / "pixelgate.yaml"
    path.write_text(EXAMPLE)
    with pytest.raises(ConfigError, match=r"providers\.openai\.api_key: environment variable OPENAI_API_KEY is not set"):
        load_config(path, env={})


def test_env_default() -> None:
    config = parse_config({"providers": {"p": {"adapter": "openai", "base_url": "${BASE:-http://127.0.0.1:1/v1}"}}, "models": {"m": [{"provider": "p"}]}}, env={})
    assert config.providers["p"].base_url == "http://127.0.0.1:1/v1"


BASE = {"providers": {"p": {"adapter": "openai", "base_url": "http://127.0.0.1:1/v1"}}, "models": {"m": [{"provider": "p"}]}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"server": {"port": "eighty"}}, r"^server\.port: Expected `int`, got `str`$"),
        ({"server": {"prot": 1}}, r"^server: Object contains unknown field `prot`$"),
        ({"providers": {"p": {"adapter": "openai", "base_url": "http://x", "timeouts": {"connect": -1}}}}, r"^providers\.p\.timeouts\.connect: Expected `float` > 0"),
        ({"providers": {"p": {"adapter": "nope"}}}, r"^providers\.p\.adapter: unknown adapter 'nope' \(known: azure, bfl, demo, fal, gemini, imagen, openai, replicate, stability, together, xai\)$"),
        ({"providers": {"p": {"adapter": "openai"}}}, r"^providers\.p\.base_url: required for the openai adapter"),
        ({"providers": {"p": {"adapter": "demo", "options": {"latency_ms": "slow"}}}}, r"^providers\.p\.options\.latency_ms: Expected `float`"),
        ({"providers": {"p": {"adapter": "demo", "options": {"colour": 1}}}}, r"^providers\.p\.options: Object contains unknown field `colour`$"),
        ({"models": {"m": [{"provider": "q"}]}}, r"^models\.m\[0\]\.provider: unknown provider 'q'$"),
        ({"models": {"m": []}}, r"^models\.m: Expected `array` of length >= 1"),
        ({"models": {"m": [{"provider": "p", "weight": 0}]}}, r"^models\.m\[0\]\.weight: Expected `float` > 0"),
    ],
)
def test_errors_name_the_key(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE | patch, env={})


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers: {a: [}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_zero_config_demo_serves_every_model() -> None:
    config = zero_config(env={})
    assert config.providers["demo"].adapter == "demo"
    assert set(config.models) == {"demo-image", WILDCARD}


def test_zero_config_passthrough_with_openai_base_url() -> None:
    config = zero_config(env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-${literal}"})
    provider = config.providers["openai"]
    assert (provider.adapter, provider.base_url, provider.api_key) == ("openai", "http://127.0.0.1:9/v1", "sk-${literal}")
    assert list(config.models) == [WILDCARD]


def test_readme_config_examples_parse() -> None:
    """Every complete config example in the README is a config the gateway accepts."""
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)]
    complete = [b for b in blocks if isinstance(b, dict) and "providers" in b and "models" in b]
    assert len(complete) >= 2
    env = {name: "x" for name in re.findall(r"\$\{([A-Z_]+)", readme)}
    for block in complete:
        parse_config(block, env=env)
