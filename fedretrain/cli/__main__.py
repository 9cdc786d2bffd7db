"""``python -m fedretrain.cli``: the ``fedretrain`` command."""

import sys

from fedretrain.cli import main

sys.exit(main())
