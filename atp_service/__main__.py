import sys

from atp_service.app.cli import main

sys.exit(main())
