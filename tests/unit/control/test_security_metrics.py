"""A metrics scrape walks the conntrack map without the control plane's lock, so a large
table does not hold up Docker's plugin calls."""

import threading

from driver.server.app import create_app

from ..fakes import FakeDatapath


class LockProbe(FakeDatapath):
    """Notes, while conntrack is walked, whether another thread could take the lock."""

    def __init__(self):
        super().__init__()
        self.lock = None
        self.lock_free_during_walk = []

    def ct_totals(self):
        def probe():
            free = self.lock.acquire(blocking=False)
            if free:
                self.lock.release()
            self.lock_free_during_walk.append(free)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return super().ct_totals()


def test_scrape_walks_conntrack_without_the_lock(config):
    datapath = LockProbe()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        datapath.lock = app.extensions["pycilium"].lock
        response = app.test_client().get("/metrics")
        assert response.status_code == 200
        assert b"pycilium_conntrack_packets" in response.get_data()
        assert datapath.lock_free_during_walk == [True]
    finally:
        app.extensions["pycilium"].close()
