// Managed by berth (roles/nginx): changes here are overwritten.
//
// The port of an app's live colour, decided on every request. Each app's server block in nginx.conf
// sets $berth_colour_file (the app's live colour file), $berth_port_blue, $berth_port_green and
// $berth_port_default; this function reads the file and returns the port of the colour it names. The
// release role switches one app's traffic by replacing that app's file atomically (write a temporary
// file in the same directory, then rename it over it): no nginx reload, so no client connection is
// dropped, and the other apps are not touched. A missing, unreadable or unknown value means the
// default colour.
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

export default { port: port };
