"""A real client generated from our OpenAPI document drives the main flow against gunicorn.

If openapi-python-client cannot build a working client from the spec, the spec is what is wrong.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
CONFIG = """\
project_name_override: postboard-client
package_name_override: postboard_client
post_hooks: []
"""


def generate_client(base_url: str, workdir: Path):
    with urllib.request.urlopen(f"{base_url}/api/openapi.json", timeout=10) as response:
        spec = json.load(response)
    (workdir / "openapi.json").write_text(json.dumps(spec))
    (workdir / "config.yaml").write_text(CONFIG)
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            "openapi.json",
            "--config",
            "config.yaml",
            "--meta",
            "none",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout
    sys.path.insert(0, str(workdir))
    for name in [m for m in sys.modules if m.startswith("postboard_client")]:
        del sys.modules[name]
    return importlib.import_module("postboard_client")


def test_generated_client_drives_the_main_flow(server, tmp_path: Path) -> None:
    http, _ = server
    try:
        generate_client(http.base, tmp_path)
        from postboard_client import AuthenticatedClient, Client
        from postboard_client.api.auth import login, logout
        from postboard_client.api.posts import (
            create_post,
            delete_post,
            get_post,
            list_posts,
            patch_post,
        )
        from postboard_client.api.users import create_user, get_me
        from postboard_client.models import (
            ErrorEnvelope,
            Login,
            PostCreate,
            PostCreateStatus,
            PostPatch,
            UserCreate,
        )

        anonymous = Client(base_url=http.base, raise_on_unexpected_status=True)
        name = f"gen{uuid.uuid4().hex[:8]}"
        created = create_user.sync_detailed(
            client=anonymous,
            body=UserCreate(email=f"{name}@example.com", username=name, password="generated-pw"),
        )
        assert created.status_code == 201
        user = created.parsed.data
        assert created.headers["Location"].endswith(f"/api/users/{user.id}")

        tokens = login.sync(
            client=anonymous, body=Login(email=f"{name}@example.com", password="generated-pw")
        )
        assert tokens.data.token_type == "Bearer"
        client = AuthenticatedClient(
            base_url=http.base, token=tokens.data.access_token, raise_on_unexpected_status=True
        )
        assert get_me.sync(client=client).data.id == user.id

        posts = []
        for i in range(5):
            response = create_post.sync_detailed(
                user.id,
                client=client,
                body=PostCreate(
                    title=f"Post {i}", body="from the client", status=PostCreateStatus.PUBLISHED
                ),
            )
            assert response.status_code == 201
            posts.append((response.parsed.data, response.headers["ETag"]))

        seen, cursor = [], None
        first = list_posts.sync(client=anonymous, per_page=2)
        seen += [p.id for p in first.data]
        cursor = first.meta.next_cursor
        while cursor:
            page = list_posts.sync(client=anonymous, per_page=2, cursor=cursor)
            seen += [p.id for p in page.data]
            cursor = page.meta.next_cursor
        assert seen == [p.id for p, _ in reversed(posts)]

        target, etag = posts[0]
        updated = patch_post.sync_detailed(
            target.id, client=client, body=PostPatch(title="Edited by the client"), if_match=etag
        )
        assert updated.status_code == 200
        assert updated.parsed.data.title == "Edited by the client"
        assert updated.parsed.data.version == target.version + 1
        stale = patch_post.sync_detailed(
            target.id, client=client, body=PostPatch(title="Lost update"), if_match=etag
        )
        assert stale.status_code == 412
        assert isinstance(stale.parsed, ErrorEnvelope)
        assert stale.parsed.error.code.value == "PRECONDITION_FAILED"

        deleted = delete_post.sync_detailed(
            target.id, client=client, if_match=updated.headers["ETag"]
        )
        assert deleted.status_code == 204
        gone = get_post.sync_detailed(target.id, client=anonymous)
        assert gone.status_code == 404
        assert gone.parsed.error.code.value == "NOT_FOUND"

        assert logout.sync_detailed(client=client).status_code == 204
        assert get_me.sync_detailed(client=client).status_code == 401
    finally:
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
