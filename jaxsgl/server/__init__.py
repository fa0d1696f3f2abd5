"""HTTP server: SGLang's native API and the OpenAI API over one Engine (FastAPI + uvicorn).

Start it with `python -m jaxsgl.launch_server` (see launch.py); build the app in-process with
`create_app(ServerState(ServerConfig(...)))`.
"""
