"""Where a worker's :class:`~streamguard.app.Settings` come from, in one precedence order.

Lowest to highest (a later source overrides an earlier one, field by field)::

    1. code         the Settings the App was built with (``App(..., settings=Settings(...), kafka={...})``)
    2. TOML file    ``--config PATH`` (default ``./streamguard.toml`` if it exists):
                    ``[streamguard]`` holds Settings fields, ``[streamguard.kafka]`` librdkafka properties
    3. environment  ``STREAMGUARD_<FIELD>`` (``STREAMGUARD_COMMIT_INTERVAL=0.5``) and
                    ``STREAMGUARD_KAFKA__<PROPERTY>`` (``STREAMGUARD_KAFKA__SASL_MECHANISM=SCRAM-SHA-512``)
    4. CLI flags    ``streamguard run --http-port 9100``

The ``kafka`` pass-through dictionary is merged key by key (a TOML ``sasl.username`` does not drop the
code's ``security.protocol``). Environment names of librdkafka properties: after ``STREAMGUARD_KAFKA__``
the name is lower-cased, a single ``_`` becomes ``.`` and a double ``__`` becomes a literal ``_``
(``STREAMGUARD_KAFKA__SSL_CA_LOCATION`` -> ``ssl.ca.location``, ``STREAMGUARD_KAFKA__LOG__LEVEL`` ->
``log_level``).

Every value is checked: an error names the setting and where it came from, and never shows the value of a
secret (``sasl.password``, ``ssl.key.password``, ...). The brokers are not a Settings field:
``STREAMGUARD_BOOTSTRAP`` overrides the App's ``brokers`` (see :func:`resolve_brokers`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamguard.app import Settings
from streamguard.errors import ConfigError

__all__ = ["ENV_PREFIX", "KAFKA_ENV_PREFIX", "SettingsSources", "describe_settings", "env_name_for_kafka",
           "is_secret", "load_settings", "load_settings_with_sources", "redact", "resolve_brokers",
           "resolve_config_path"]

ENV_PREFIX = "STREAMGUARD_"
KAFKA_ENV_PREFIX = "STREAMGUARD_KAFKA__"
DEFAULT_CONFIG_FILE = "streamguard.toml"

# STREAMGUARD_* variables that are not Settings fields (read elsewhere); never reported as unknown.
_OTHER_ENV = frozenset({
    "BOOTSTRAP", "CHAOS_API", "CRASH_AT", "CRASH_SEED", "KAFKA", "KAFKA_CACHE", "KAFKA_FAST_JIT", "KAFKA_VERSION",
    "LOG_JSON", "LOG_LEVEL", "PG_DIR", "PG_DSN", "PG_PORT", "WORKER_INDEX", "CONFIG",
})

_SECRET_PATTERN = re.compile(r"(password|secret|token|credential|jaas|ssl\.key\.pem|ssl_key|private)", re.I)

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SCALAR_FIELDS = tuple(name for name in _FIELDS if name != "kafka")

_POSITIVE_FLOATS = {"commit_interval", "revoke_timeout", "shutdown_timeout", "startup_timeout", "lease_seconds"}
_NON_NEGATIVE_FLOATS = {"poll_timeout"}
_POSITIVE_INTS = {"poll_batch", "max_inflight_total", "max_inflight_bytes", "sync_threads", "metadata_max_bytes"}
_OFFSET_RESETS = ("earliest", "latest", "smallest", "largest", "beginning", "end", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# lower-case words joined by dots, underscores inside words ("log_level"): no leading/trailing/doubled "_" or "."
_KAFKA_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*(?:\.[a-z0-9]+(?:_[a-z0-9]+)*)*$")

SettingsSources = dict[str, str]
"""Which source set each overridden field (``"commit_interval"`` / ``"kafka.sasl.username"`` -> source)."""


def is_secret(name: str) -> bool:
    """True for librdkafka properties whose values must never be printed (passwords, keys, tokens)."""
    return bool(_SECRET_PATTERN.search(name))


def redact(kafka: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka settings dict with secret values replaced by ``'***'``."""
    return {k: ("***" if is_secret(k) else v) for k, v in kafka.items()}


def env_name_for_kafka(prop: str) -> str:
    """The environment variable that sets librdkafka property ``prop`` (``sasl.mechanism`` ->
    ``STREAMGUARD_KAFKA__SASL_MECHANISM``)."""
    return KAFKA_ENV_PREFIX + prop.replace("_", "__").replace(".", "_").upper()


def _kafka_name_from_env(suffix: str) -> str:
    return "_".join(part.replace("_", ".") for part in suffix.lower().split("__"))


def _suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_kind(name: str) -> str:
    default = _FIELDS[name].default
    if name == "http_port":
        return "port"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"


def _convert_text(name: str, text: str, where: str) -> Any:
    """Convert an environment string for Settings field ``name``."""
    kind = _field_kind(name)
    raw = text.strip()
    if kind == "float":
        try:
            number = float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {text!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {text!r}")
        return number
    if kind in ("int", "port"):
        if kind == "port" and raw.lower() in ("", "none"):
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if kind == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    return text


def _check_type(name: str, value: Any, where: str) -> Any:
    """Check a TOML/CLI value's type for field ``name`` (TOML already typed it)."""
    kind = _field_kind(name)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind in ("int", "port"):
        if kind == "port" and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _check_range(name: str, value: Any, where: str) -> None:
    if name in _POSITIVE_FLOATS and value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    if name in _NON_NEGATIVE_FLOATS and value < 0:
        raise ConfigError(f"{where}: must be >= 0, got {value!r}")
    if name in _POSITIVE_INTS and value < 1:
        raise ConfigError(f"{where}: must be >= 1, got {value!r}")
    if name == "failure_topic_replication" and value != -1 and value < 1:
        raise ConfigError(f"{where}: must be -1 (broker default) or >= 1, got {value!r}")
    if name == "http_port" and value is not None and not 0 <= value <= 65535:
        raise ConfigError(f"{where}: must be a TCP port (0-65535), got {value!r}")
    if name == "auto_offset_reset" and value not in _OFFSET_RESETS:
        raise ConfigError(f"{where}: must be one of {', '.join(_OFFSET_RESETS)}, got {value!r}")


def _check_kafka_name(prop: str, where: str) -> None:
    if not _KAFKA_NAME.match(prop):
        raise ConfigError(f"{where}: {prop!r} is not a librdkafka property name (lower-case words joined by dots, "
                          "e.g. 'sasl.mechanism')")


def _check_kafka_value(prop: str, value: Any, where: str) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    shown = "a value" if is_secret(prop) else f"{value!r}"
    raise ConfigError(f"{where}: librdkafka properties take a string, number or boolean, got {shown} "
                      f"({type(value).__name__})")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"sasl": {"mechanism": "X"}}`` (TOML dotted keys) -> ``{"sasl.mechanism": "X"}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``[streamguard]`` fields and the flattened ``[streamguard.kafka]`` table of ``path``."""
    label = path.name
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    for key in doc:
        if key != "streamguard":
            raise ConfigError(f"{label}: unknown section {key!r} (streamguard reads [streamguard] and "
                              "[streamguard.kafka])")
    section = doc.get("streamguard", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{label}: 'streamguard' must be a table ([streamguard])")
    fields: dict[str, Any] = {}
    kafka: dict[str, Any] = {}
    for key, value in section.items():
        if key == "kafka":
            if not isinstance(value, dict):
                raise ConfigError(f"{label}: 'kafka' must be a table ([streamguard.kafka])")
            kafka = _flatten(value)
        elif key in _SCALAR_FIELDS:
            fields[key] = value
        else:
            raise ConfigError(f"{label}: unknown setting {key!r}{_suggest(key, _SCALAR_FIELDS)}")
    return fields, kafka


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """Settings fields and librdkafka properties found in ``env``: name -> (variable, text)."""
    fields: dict[str, tuple[str, str]] = {}
    kafka: dict[str, tuple[str, str]] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        if var.startswith(KAFKA_ENV_PREFIX):
            suffix = var[len(KAFKA_ENV_PREFIX):]
            prop = _kafka_name_from_env(suffix)
            _check_kafka_name(prop, var)
            kafka[prop] = (var, env[var])
            continue
        suffix = var[len(ENV_PREFIX):]
        name = suffix.lower()
        if name in _SCALAR_FIELDS:
            fields[name] = (var, env[var])
        elif suffix in _OTHER_ENV or suffix.startswith("PG_"):
            continue
        elif suffix.startswith("KAFKA_"):
            raise ConfigError(f"{var}: unknown setting; librdkafka properties are set with two underscores after "
                              f"KAFKA, e.g. {KAFKA_ENV_PREFIX}{suffix[len('KAFKA_'):]}")
        else:
            hint = _suggest(name, _SCALAR_FIELDS)
            if hint:  # a typo of a real setting: fail rather than silently run with the default
                close = difflib.get_close_matches(name, _SCALAR_FIELDS, n=1, cutoff=0.75)[0]
                raise ConfigError(f"{var}: unknown setting (did you mean {ENV_PREFIX}{close.upper()}?)")
    return fields, kafka


def resolve_config_path(explicit: str | Path | None, cwd: Path | None = None) -> Path | None:
    """``--config PATH`` if given (it must exist), else ``./streamguard.toml`` if present, else None."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"--config {explicit}: file not found")
        return path.resolve()
    default = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
    return default.resolve() if default.is_file() else None


def load_settings_with_sources(base: Settings, *, toml_path: Path | None, env: Mapping[str, str],
                               cli: Mapping[str, Any] | None = None) -> tuple[Settings, SettingsSources]:
    """Like :func:`load_settings`, also returning which source set each overridden field."""
    values: dict[str, Any] = {name: getattr(base, name) for name in _SCALAR_FIELDS}
    kafka: dict[str, Any] = dict(base.kafka)
    sources: SettingsSources = {}

    if toml_path is not None:
        label = Path(toml_path).name
        t_fields, t_kafka = _read_toml(Path(toml_path))
        for name, value in t_fields.items():
            where = f"{label}: [streamguard] {name}"
            values[name] = _check_type(name, value, where)
            _check_range(name, values[name], where)
            sources[name] = label
        for prop, value in t_kafka.items():
            where = f"{label}: [streamguard.kafka] {prop}"
            _check_kafka_name(prop, where)
            kafka[prop] = _check_kafka_value(prop, value, where)
            sources[f"kafka.{prop}"] = label

    e_fields, e_kafka = _read_env(env)
    for name, (var, text) in e_fields.items():
        values[name] = _convert_text(name, text, var)
        _check_range(name, values[name], var)
        sources[name] = var
    for prop, (var, text) in e_kafka.items():
        kafka[prop] = text
        sources[f"kafka.{prop}"] = var

    for name, value in (cli or {}).items():
        if name == "kafka":
            raise ConfigError("command line: librdkafka properties are set in the TOML file or the environment")
        if name not in _SCALAR_FIELDS:
            raise ConfigError(f"command line: unknown setting {name!r}{_suggest(name, _SCALAR_FIELDS)}")
        where = f"--{name.replace('_', '-')}"
        values[name] = _check_type(name, value, where)
        _check_range(name, values[name], where)
        sources[name] = where

    return Settings(**values, kafka=kafka), sources


def load_settings(base: Settings, *, toml_path: Path | None, env: Mapping[str, str],
                  cli: Mapping[str, Any] | None = None) -> Settings:
    """Merge ``base`` (code) < ``toml_path`` < ``env`` < ``cli`` into a new Settings; ``base`` is not changed.

    Raises :class:`ConfigError` naming the setting and its source for an unknown name or a bad value.
    """
    return load_settings_with_sources(base, toml_path=toml_path, env=env, cli=cli)[0]


def resolve_brokers(app_brokers: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The bootstrap servers to use and where they came from: ``STREAMGUARD_BOOTSTRAP`` wins over the App's."""
    value = env.get("STREAMGUARD_BOOTSTRAP", "").strip()
    if value:
        return value, "STREAMGUARD_BOOTSTRAP"
    return app_brokers, "code"


def describe_settings(settings: Settings, sources: SettingsSources) -> str:
    """One line naming the settings that did not come from code, secrets redacted (for the startup log)."""
    parts = []
    for key in sorted(sources):
        if key.startswith("kafka."):
            prop = key[len("kafka."):]
            value = "***" if is_secret(prop) else settings.kafka.get(prop)
        else:
            value = getattr(settings, key)
        parts.append(f"{key}={value!r} ({sources[key]})")
    return ", ".join(parts) if parts else "all from code"
