// Managed by berth (roles/nginx): changes here are overwritten.
//
// The live app colour, read on every request from the file named by $berth_live_colour_file
// (nginx_live_colour_file). The release logic switches traffic by replacing that file atomically
// (write a temporary file in the same directory, then rename it over it): no nginx reload, so no
// client connection is dropped. nginx.conf maps the colour to its port; a missing, unreadable or
// unknown value maps to the default colour.
var fs = require('fs');

function colour(r) {
    try {
        return fs.readFileSync(r.variables.berth_live_colour_file, 'utf8').trim();
    } catch (e) {
        return '';
    }
}

export default { colour: colour };
