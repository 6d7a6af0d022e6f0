"""Training one experiment: the grid file and its validation (``grid``, ``grid_params``,
``grid_yaml``), the scikit-learn pipeline (``features``), stratified cross-validation of one
grid point (``experiment``), model artifacts (``artifacts``) and the leaderboard. Uses ``core``
only; knows nothing of the warehouse, the loop or CML."""
