"""Neural architecture search: DARTS (``darts/``, a supernet's architecture learned by gradient) and search
over discrete child networks (``rl/``, each child trained and scored)."""
