"""Everything the factory keeps in the warehouse (SQLite on the embedded default, Hive in
production), through any DB-API hook the caller passes in: the SQL of each engine (``sql``),
tables of contract rows (``contract_table``), experiment outcomes, promotions, deployments, the
closed loop's tables, the training table and its snapshots, and the experiments summary file.
Uses ``core`` only."""
