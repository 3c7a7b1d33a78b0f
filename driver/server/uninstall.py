"""`python -m driver.server.uninstall`: take one stopped driver instance off the host.

It takes the same settings as `cilium-docker` (options or CILIUM_<OPTION> variables), so
it removes exactly what that instance added: `make uninstall` passes DRIVER_ARGS to both.
"""

import click

from driver.control.uninstall import engine, uninstall
from driver.errors import DriverError

from .main import config_of, driver_options


@click.command(context_settings={"show_default": True})
@click.option(
    "--without-docker",
    is_flag=True,
    help="do not ask Docker for networks of the driver (its engine is gone for good)",
)
@driver_options
def main(without_docker: bool, **options):
    """Remove what the driver added to this host: its veths, the routes of its ranges, its
    iptables rules and chain, the pinned maps, the state and the sockets. Refuses while the
    driver runs or Docker still has networks of it."""
    config = config_of(options)
    client = None if without_docker else engine(config.docker_host)
    try:
        removed = uninstall(config, client)
    except DriverError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if client is not None:
            client.close()
    for line in removed:
        click.echo(f"removed {line}")
    if not removed:
        click.echo(f"nothing of the {config.plugin_name} driver is left on this host")


if __name__ == "__main__":
    main()
