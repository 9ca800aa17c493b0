"""Runs: the folder every command writes (``files``), its record (``record``), the lifecycle that
keeps it honest from start to end (``lifecycle``), stop signals (``signals``), ``resume``, and the
keys every command shares (``options``)."""
