"""``python -m atp_service`` and the ``atp-service`` script: stop signals are caught before the
service's modules are imported (see ``early_signals``)."""

import sys

from atp_service.early_signals import catch_stops


def run() -> int:
    catch_stops()
    from atp_service.app.cli import main  # the slow import, now under the early signal handlers

    return main()


if __name__ == "__main__":
    sys.exit(run())
