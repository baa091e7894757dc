"""``collector export``: recorded tables to Parquet files (``parquet``), and its command line (``command``).

Needs the ``export`` extra (pyarrow, tqdm); the rest of the collector does not.
"""
