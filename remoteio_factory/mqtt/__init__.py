"""
``remoteio mqtt``: a bridge between remoteio servers and an MQTT broker, with
Home Assistant's MQTT discovery (docs/mqtt.md).

:mod:`.config` reads the configuration, :mod:`.topics` is the topic layout and
the discovery payloads, :mod:`.bridge` runs it all. Needs paho-mqtt
(``pip install 'remoteio-factory[mqtt]'``).
"""
