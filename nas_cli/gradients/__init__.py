"""Gradient estimates for networks with binary (sign) activations: STE, NES, REINFORCE, CDG, and the one-step protocol.

``problem``: the 3-layer sign MLP and its teacher, evaluated for one or many weight vectors at once.
``estimators``: the four STE variants (autograd), NES (batched Gaussian search), CDG (coordinate central differences).
``reinforce``: the score-function (REINFORCE) estimator with stochastic binary units and a leave-one-out baseline.
``natural_nes``: separable NES, natural-gradient steps of the mean and the spread of N(mu, sigma^2) per weight.
``protocol``: one step ``w <- w - lr g`` per estimator and learning rate, the best lr, the cosine to CDG.
``plots``: loss decrease vs lr, best loss decrease vs num_dim.
``recipe``: ``nas-cli grad-bench`` as a run: the protocol's blocks, the tables and plots of its results.
"""
