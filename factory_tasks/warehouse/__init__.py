"""Everything the factory keeps in the warehouse (SQLite on the embedded default, Hive in
production), through any DB-API hook the caller passes in: what the SQL engines share
(``sql``), one module per engine (``sqlite``, ``hive``), tables of contract rows
(``contract_table``), experiment outcomes, promotions, deployments, the closed loop's tables,
the training table and its snapshots, and the experiments summary file. Uses ``core`` only."""
