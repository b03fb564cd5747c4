"""PlantPulse: industrial telemetry over MQTT and HTTP into TimescaleDB."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plantpulse")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
