"""Neural architecture search: DARTS (``darts/``) and search over discrete child networks
(``search_loop``): ``controllers/`` propose from a ``spaces`` space, ``children`` trains and scores
each one (``arch`` builds it)."""
