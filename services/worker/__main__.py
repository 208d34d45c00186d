from services.worker.cli import app

app()
