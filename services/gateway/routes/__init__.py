"""The gateway's routes, one APIRouter per module; app.py includes them in a fixed order."""
