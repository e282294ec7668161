from cloudmig.cli import run

run()
