"""search-rl: ``controllers/`` propose child networks from a ``spaces`` space, ``children`` trains and scores
each one (``arch`` builds it, ``executors`` runs it as a submitit job), ``search`` is the loop between them."""
