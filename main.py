"""Entry point: `uvicorn main:app`, or `python main.py` for a development server."""

from __future__ import annotations

import os

from app.app import create_app

app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        "main:app",
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        access_log=False,
        proxy_headers=True,
    )
