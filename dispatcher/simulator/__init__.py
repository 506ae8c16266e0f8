"""The built-in telephony simulator: a separate HTTP service that plays calls out, posts
signed status callbacks, and keeps the score tests check Switchboard against.

`engine` holds the simulation (no HTTP); `app.create_app` serves it.
"""

from dispatcher.simulator.app import create_app
from dispatcher.simulator.engine import SimConfig, Simulator

__all__ = ["SimConfig", "Simulator", "create_app"]
