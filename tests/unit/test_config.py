"""Settings precedence (code < TOML < environment < CLI) and the errors for bad names and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamguard.app import Settings
from streamguard.config import (
    describe_settings,
    env_name_for_kafka,
    load_settings,
    load_settings_with_sources,
    redact,
    resolve_brokers,
    resolve_config_path,
)
from streamguard.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamguard.toml"
    path.write_text(text)
    return path


def test_each_source_overrides_the_one_before(tmp_path):
    base = Settings(commit_interval=5.0, poll_batch=7, shutdown_timeout=9.0, http_port=1000)
    path = toml(tmp_path, "[streamguard]\ncommit_interval = 4.0\npoll_batch = 70\nhttp_port = 2000\n")
    env = {"STREAMGUARD_COMMIT_INTERVAL": "3.0", "STREAMGUARD_HTTP_PORT": "3000"}
    s, sources = load_settings_with_sources(base, toml_path=path, env=env, cli={"http_port": 4000})
    assert s.shutdown_timeout == 9.0          # code only
    assert s.poll_batch == 70                 # TOML over code
    assert s.commit_interval == 3.0           # env over TOML
    assert s.http_port == 4000                # CLI over env
    assert sources == {"poll_batch": "streamguard.toml", "commit_interval": "STREAMGUARD_COMMIT_INTERVAL",
                       "http_port": "--http-port"}
    assert base.commit_interval == 5.0 and base.http_port == 1000  # the App's Settings are not changed


def test_no_file_no_env_keeps_the_code_settings():
    base = Settings(commit_interval=0.25, kafka={"client.rack": "a"})
    s = load_settings(base, toml_path=None, env={"PATH": "/bin", "STREAMGUARD_PG_DSN": "x", "STREAMGUARD_FOO": "y"})
    assert s == base and s is not base and s.kafka is not base.kafka


def test_kafka_pass_through_merges_key_by_key(tmp_path):
    base = Settings(kafka={"security.protocol": "SASL_SSL", "sasl.username": "code-user", "client.rack": "r1"})
    path = toml(tmp_path, '[streamguard.kafka]\n"sasl.username" = "toml-user"\nsasl.mechanism = "SCRAM-SHA-512"\n'
                          "ssl.ca.location = '/etc/ca.pem'\nfetch.min.bytes = 10\n")
    env = {"STREAMGUARD_KAFKA__SASL_USERNAME": "env-user", "STREAMGUARD_KAFKA__LOG__LEVEL": "7"}
    s = load_settings(base, toml_path=path, env=env)
    assert s.kafka == {"security.protocol": "SASL_SSL", "sasl.username": "env-user", "client.rack": "r1",
                       "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": "/etc/ca.pem", "fetch.min.bytes": 10,
                       "log_level": "7"}


def test_env_names_of_librdkafka_properties_round_trip():
    assert env_name_for_kafka("sasl.mechanism") == "STREAMGUARD_KAFKA__SASL_MECHANISM"
    assert env_name_for_kafka("log_level") == "STREAMGUARD_KAFKA__LOG__LEVEL"
    for prop in ("ssl.ca.location", "log_level", "sasl.oauthbearer.client.id", "enable.ssl.certificate.verification"):
        s = load_settings(Settings(), toml_path=None, env={env_name_for_kafka(prop): "v"})
        assert s.kafka == {prop: "v"}


@pytest.mark.parametrize(("var", "text", "message"), [
    ("STREAMGUARD_COMMIT_INTERVAL", "fast", "STREAMGUARD_COMMIT_INTERVAL: expected a number, got 'fast'"),
    ("STREAMGUARD_POLL_BATCH", "1.5", "STREAMGUARD_POLL_BATCH: expected an integer, got '1.5'"),
    ("STREAMGUARD_CREATE_FAILURE_TOPICS", "maybe", "STREAMGUARD_CREATE_FAILURE_TOPICS: expected true or false"),
    ("STREAMGUARD_COMMIT_INTERVAL", "0", "STREAMGUARD_COMMIT_INTERVAL: must be > 0, got 0.0"),
    ("STREAMGUARD_COMMIT_INTERVAL", "nan", "STREAMGUARD_COMMIT_INTERVAL: expected a finite number"),
    ("STREAMGUARD_SYNC_THREADS", "0", "STREAMGUARD_SYNC_THREADS: must be >= 1"),
    ("STREAMGUARD_HTTP_PORT", "70000", "STREAMGUARD_HTTP_PORT: must be a TCP port"),
    ("STREAMGUARD_AUTO_OFFSET_RESET", "oldest", "STREAMGUARD_AUTO_OFFSET_RESET: must be one of earliest, latest"),
    ("STREAMGUARD_COMIT_INTERVAL", "1", "STREAMGUARD_COMIT_INTERVAL: unknown setting (did you mean "
                                        "STREAMGUARD_COMMIT_INTERVAL?)"),
    ("STREAMGUARD_KAFKA_SASL_MECHANISM", "PLAIN", "use two underscores"),
    ("STREAMGUARD_KAFKA__SASL__", "x", "is not a librdkafka property name"),
])
def test_bad_environment_values_name_the_variable(var, text, message):
    with pytest.raises(ConfigError) as info:
        load_settings(Settings(), toml_path=None, env={var: text})
    if message == "use two underscores":
        assert str(info.value).startswith(f"{var}: unknown setting")
        assert "STREAMGUARD_KAFKA__SASL_MECHANISM" in str(info.value)
    else:
        assert message in str(info.value)


def test_environment_conversions():
    env = {"STREAMGUARD_LOG_VALUES": "yes", "STREAMGUARD_CREATE_FAILURE_TOPICS": "0", "STREAMGUARD_HTTP_PORT": "none",
           "STREAMGUARD_POLL_BATCH": " 42 ", "STREAMGUARD_HTTP_HOST": "0.0.0.0", "STREAMGUARD_COMMIT_INTERVAL": "2"}
    s = load_settings(Settings(http_port=9000), toml_path=None, env=env)
    assert (s.log_values, s.create_failure_topics, s.http_port, s.poll_batch, s.http_host, s.commit_interval) == \
        (True, False, None, 42, "0.0.0.0", 2.0)
    assert isinstance(s.commit_interval, float)


@pytest.mark.parametrize(("text", "message"), [
    ("[streamguard]\ncomit_interval = 1.0\n",
     "streamguard.toml: unknown setting 'comit_interval' (did you mean 'commit_interval'?)"),
    ("[streamguard]\nwhatever = 1\n", "streamguard.toml: unknown setting 'whatever'"),
    ("[streamguard]\ncommit_interval = 'fast'\n",
     "streamguard.toml: [streamguard] commit_interval: expected a number, got 'fast'"),
    ("[streamguard]\npoll_batch = 2.5\n", "streamguard.toml: [streamguard] poll_batch: expected an integer, got 2.5"),
    ("[streamguard]\npoll_batch = true\n", "poll_batch: expected an integer, got True"),
    ("[streamguard]\nlog_values = 1\n", "log_values: expected true or false, got 1"),
    ("[streamguard]\nshutdown_timeout = -1\n", "[streamguard] shutdown_timeout: must be > 0, got -1.0"),
    ("[streamguard]\nkafka = 3\n", "'kafka' must be a table"),
    ("[streamgaurd]\ncommit_interval = 1\n", "streamguard.toml: unknown section 'streamgaurd'"),
    ("[streamguard\n", "streamguard.toml: invalid TOML"),
    ("[streamguard.kafka]\n'Sasl Mechanism' = 'PLAIN'\n", "is not a librdkafka property name"),
    ("[streamguard.kafka]\n'sasl.mechanism' = ['PLAIN']\n", "[streamguard.kafka] sasl.mechanism: librdkafka "
                                                            "properties take a string, number or boolean"),
])
def test_bad_toml_names_the_file_and_setting(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_settings(Settings(), toml_path=toml(tmp_path, text), env={})
    assert message in str(info.value)


def test_cli_values_are_checked_too():
    with pytest.raises(ConfigError, match=r"--http-port: must be a TCP port"):
        load_settings(Settings(), toml_path=None, env={}, cli={"http_port": -5})
    with pytest.raises(ConfigError, match=r"unknown setting 'htp_port' \(did you mean 'http_port'\?\)"):
        load_settings(Settings(), toml_path=None, env={}, cli={"htp_port": 1})


def test_secrets_are_never_shown(tmp_path):
    secret = "hunter2-do-not-print"
    path = toml(tmp_path, f"[streamguard.kafka]\n'sasl.password' = ['{secret}']\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Settings(), toml_path=path, env={})
    assert secret not in str(info.value)
    path = toml(tmp_path, f"[streamguard.kafka]\n'sasl.username' = 'alice'\n'sasl.password' = '{secret}'\n")
    env = {"STREAMGUARD_KAFKA__SSL_KEY_PASSWORD": secret, "STREAMGUARD_COMMIT_INTERVAL": "0.5"}
    s, sources = load_settings_with_sources(Settings(), toml_path=path, env=env)
    assert s.kafka["sasl.password"] == secret and s.kafka["ssl.key.password"] == secret
    text = describe_settings(s, sources)
    assert secret not in text
    assert "kafka.sasl.password='***' (streamguard.toml)" in text
    assert "kafka.ssl.key.password='***' (STREAMGUARD_KAFKA__SSL_KEY_PASSWORD)" in text
    assert "kafka.sasl.username='alice' (streamguard.toml)" in text
    assert "commit_interval=0.5 (STREAMGUARD_COMMIT_INTERVAL)" in text
    assert redact({"sasl.password": secret, "ssl.key.pem": secret, "sasl.oauthbearer.client.secret": secret,
                   "sasl.username": "u"}) == {"sasl.password": "***", "ssl.key.pem": "***",
                                              "sasl.oauthbearer.client.secret": "***", "sasl.username": "u"}


def test_bootstrap_environment_overrides_the_app_brokers():
    assert resolve_brokers("code:9092", {}) == ("code:9092", "code")
    assert resolve_brokers("code:9092", {"STREAMGUARD_BOOTSTRAP": "env:9092"}) == ("env:9092", "STREAMGUARD_BOOTSTRAP")
    assert resolve_brokers("code:9092", {"STREAMGUARD_BOOTSTRAP": " "}) == ("code:9092", "code")


def test_config_path_default_and_explicit(tmp_path):
    assert resolve_config_path(None, cwd=tmp_path) is None
    path = toml(tmp_path, "")
    assert resolve_config_path(None, cwd=tmp_path) == path.resolve()
    assert resolve_config_path(str(path)) == path.resolve()
    with pytest.raises(ConfigError, match=r"--config .*nope\.toml: file not found"):
        resolve_config_path(str(tmp_path / "nope.toml"))
    assert load_settings(Settings(), toml_path=path, env={}) == Settings()  # an empty file is fine
