"""Data generation, training, export and model cards of the physics models.

`make models` (or `offload train`) regenerates the data, trains the three models and
exports them into `model_repository/` with their model cards. Stands on the thin client
(the physics preprocessing lives once, in `offload.physics`) and on the server's runners
(to check an export by loading it exactly as the server will).
"""
