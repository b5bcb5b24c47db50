from tests.support.assertions import assert_error


def test_register_login_post_flow(client, account):
    post = account.post_as("Hello", status="published")
    listing = client.get("/api/posts").get_json()
    assert [p["id"] for p in listing["data"]] == [post["id"]]
    assert_error(client.get("/api/nope"), 404, "NOT_FOUND")
