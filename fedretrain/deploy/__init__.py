"""Deployment groundwork: credentials for a SuperLink and its sites, and a site's data folder.

Nothing here imports Flower. :mod:`fedretrain.deploy.certs` writes the files that
``flower-superlink`` and ``flower-supernode`` read and drives the ``flwr`` CLI to register
sites; :mod:`fedretrain.deploy.folder` turns a folder of CSV/Parquet files into monitoring
periods, checking each file with :mod:`fedretrain.deploy.schema`. ``docs/deployment-notes.md``
records the Flower 1.41 command lines they serve.
"""
