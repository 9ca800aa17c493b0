"""What proposes search-rl's child networks: REINFORCE (Zoph & Le 2017), MetaQNN's Q-learning (Baker et al.
2017) and the baselines (random search, regularized evolution). Each is a ``_target_`` of ``conf/controller/``."""
