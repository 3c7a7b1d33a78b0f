"""The service map in a real headless browser (Debian's chromium) over a driver of the
test's own with real containers and traffic: the page loads, shows the identities and the
flows between them, and a new drop turns up in red without a reload."""

import os

from ..ports import free_port
from .devtools import Browser

POLICY = """
- endpointSelector: {matchLabels: {app: web}}
  labels: ["name=web-from-client"]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""
RED = "rgb(224,32,32)"
GREY = "rgb(127,140,141)"


def _identity(driver, name: str) -> int:
    return next(ep.identity for ep in driver.plane.store.endpoints() if ep.container_name == name)


def _edge(a: int, b: int) -> str:
    return f"serviceMap.cy.getElementById('e{a}-{b}')"


def test_the_map_shows_flows_and_a_new_drop_in_red_without_a_reload(driver):
    web = driver.container("web", {"app": "web"})
    client = driver.container("client", {"app": "client"})
    intruder = driver.container("intruder", {"app": "intruder"})
    driver.api("PUT", "policy", {"text": POLICY, "source": "web.yaml"})
    web.serve(8080)
    assert client.exchange(web.ipv6, 8080)
    assert client.exchange(web.ipv4, 8080)
    ids = {name: _identity(driver, name) for name in ("web", "client", "intruder")}

    browser = Browser(f"http://{driver.ui_address}/ui/", free_port())
    try:
        browser.wait_for("window.serviceMap && serviceMap.polls > 0")
        names = browser.evaluate("serviceMap.cy.nodes().map(n => n.data('label').split('\\n')[0])")
        assert {"web", "client", "intruder"} <= set(names)
        allowed = _edge(ids["client"], ids["web"])
        assert browser.wait_for(f"{allowed}.nonempty() && {allowed}.data('forwarded')") == 2
        assert browser.evaluate(f"{allowed}.style('line-color')") == GREY
        denied = _edge(ids["intruder"], ids["web"])
        assert browser.evaluate(f"{denied}.empty()")
        browser.evaluate("window.notReloaded = true")

        assert not intruder.exchange(web.ipv6, 8080, timeout=1)
        assert browser.wait_for(f"{denied}.nonempty() && {denied}.data('dropped')") >= 1
        assert browser.evaluate(f"{denied}.style('line-color')") == RED
        row = f"document.querySelector('#edges tr[data-edge=e{ids['intruder']}-{ids['web']}]')"
        assert browser.evaluate(f"{row}.className") == "dropped"
        assert browser.evaluate("window.notReloaded") is True

        browser.evaluate(f"void {denied}.emit('tap')")
        lines = browser.wait_for(
            "Array.from(document.querySelectorAll('#flows li.DROPPED')).map(li => li.textContent)"
        )
        assert all("intruder" in line and "Policy denied" in line for line in lines)
        if os.environ.get("SERVICEMAP_SCREENSHOT"):
            browser.evaluate(f"void {allowed}.emit('tap')")
            browser.wait_for("!!document.querySelector('#flows li.FORWARDED')")
            browser.screenshot(os.environ["SERVICEMAP_SCREENSHOT"])
    finally:
        browser.close()
