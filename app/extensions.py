"""Extension objects, created unbound; `create_app` binds them."""

from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from app.core.api import RestApi
from app.core.db import Base
from app.core.tasks import PostboardCelery

db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate(compare_type=True, render_as_batch=True)
api = RestApi()
jwt = JWTManager()
celery = PostboardCelery("postboard")
