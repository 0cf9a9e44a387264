"""Runtime: configuration errors fail at startup with a message that names the problem; nothing is consumed."""

from __future__ import annotations

import pytest

from streamguard import App, ConfigError, HandlerSignatureError, Settings, UnknownTopic


def test_bad_handler_signature_is_refused_at_registration():
    app = App("sig", "127.0.0.1:1")
    with pytest.raises(HandlerSignatureError, match="must take"):
        app.handler("t")(lambda: None)
    with pytest.raises(HandlerSignatureError, match="requires 3"):
        app.handler("t2")(lambda a, b, c: None)
    with pytest.raises(ConfigError, match="concurrency"):
        app.handler("t3", concurrency=0)
    with pytest.raises(ConfigError, match="already has a handler"):
        app.handler("t4")(lambda m: None)
        app.handler("t4")(lambda m: None)


def test_unknown_topic_is_named(kafka, new_topic):
    present = new_topic()
    app = App("unknown-topic", kafka.bootstrap, settings=Settings(startup_timeout=10))
    app.handler(present)(lambda m: None)
    app.handler("no-such-topic-xyz")(lambda m: None)
    with pytest.raises(UnknownTopic, match="no-such-topic-xyz"):
        app.worker(install_signals=False).run()


def test_invalid_librdkafka_setting_is_named(kafka, new_topic):
    topic = new_topic()
    app = App("bad-setting", kafka.bootstrap, kafka={"fetch.wait.max.msx": 5}, settings=Settings(startup_timeout=10))
    app.handler(topic)(lambda m: None)
    with pytest.raises(ConfigError, match=r"fetch\.wait\.max\.msx"):
        app.worker(install_signals=False).run()
