"""A health endpoint: the smallest web application the runtime image can serve."""

from flask import Flask

app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
