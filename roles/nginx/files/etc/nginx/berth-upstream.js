// Managed by berth (roles/nginx): changes here are overwritten.
//
// The port of an app's live colour, decided on every request. Each app's server block in nginx.conf
// sets $berth_colour_file (the app's live colour file), $berth_port_blue, $berth_port_green and
// $berth_port_default; this function reads the file and returns the port of the colour it names. The
// release role switches one app's traffic by replacing that app's file atomically (write a temporary
// file in the same directory, then rename it over it): no nginx reload, so no client connection is
// dropped, and the other apps are not touched. A missing, unreadable or unknown value means the
// default colour.
//
// Whether an app is in maintenance, also decided on every request: the app's server sets
// $berth_maintenance_file (<state dir>/maintenance, written and removed by the nginx role's entry point
// maintenance); while it exists, the app's requests get the maintenance page (503). The host's own
// checks through nginx ($berth_edge_check: from loopback with X-Berth-Edge-Check: 1, the release's check
// after a switch and reboot.yml's) still reach the app, so a deploy during maintenance can be checked.
var fs = require('fs');

function port(r) {
    var v = r.variables;
    var colour = '';
    try {
        colour = fs.readFileSync(v.berth_colour_file, 'utf8').trim();
    } catch (e) {
        colour = '';
    }
    if (colour === 'blue') {
        return v.berth_port_blue;
    }
    if (colour === 'green') {
        return v.berth_port_green;
    }
    return v.berth_port_default;
}

function maintenance(r) {
    var v = r.variables;
    if (v.berth_edge_check === '1') {
        return '0';
    }
    try {
        fs.accessSync(v.berth_maintenance_file);
        return '1';
    } catch (e) {
        return '0';
    }
}

export default { port: port, maintenance: maintenance };
