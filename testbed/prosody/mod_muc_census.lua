-- mod_muc_census, as the tests load it into Debian's Prosody (which has none of Jitsi's plugins): a
-- stand-in for Jitsi's own module, which the jitsi/prosody image ships and the manifests use.
--
-- GET /room-census on Prosody's HTTP port answers, like Jitsi's mod_muc_census,
--   {"room_census":[{"room_name":"<room>@<muc>","participants":N,"created_time":<ms>,"leaked":false}]}
-- where participants excludes Jicofo's "focus" occupant. Unauthenticated, like the original: keep
-- Prosody's HTTP port off the public network (the prosody-exporter sidecar reads it on localhost).
--
-- Load it on the VirtualHost (its modules_enabled); it reads the MUC component named by
-- muc_census_component (default "conference.<host>"). Prosody routes HTTP by Host header: set
-- http_default_host to the XMPP domain (the jitsi/prosody image does) so that a sidecar asking
-- http://127.0.0.1:5280/room-census reaches it.

local array = require "util.array";
local json = require "util.json";
local jid_resource = require "util.jid".resource;

local muc_domain = module:get_option_string("muc_census_component", "conference." .. module.host);
local focus_nick = module:get_option_string("muc_census_focus_nick", "focus");

-- When each room was created, in milliseconds, as Jitsi reports it.
local created = setmetatable({}, { __mode = "k" });
module:context(muc_domain):hook("muc-room-created", function(event)
	created[event.room] = math.floor(os.time() * 1000);
end);

local function census(event)
	local host = prosody.hosts[muc_domain];
	local muc = host and host.modules.muc;
	if not muc then
		return { status_code = 404; body = "no MUC component " .. muc_domain .. "\n" };
	end
	-- util.array: encoded as a JSON array even when empty ([] rather than {}).
	local rooms = array();
	for room in muc.live_rooms() do
		local participants = 0;
		for _, occupant in room:each_occupant() do
			if jid_resource(occupant.nick) ~= focus_nick then
				participants = participants + 1;
			end
		end
		rooms[#rooms + 1] = {
			room_name = room.jid;
			participants = participants;
			created_time = created[room];
			leaked = false;
		};
	end
	event.response.headers.content_type = "application/json";
	return json.encode({ room_census = rooms });
end

module:provides("http", {
	default_path = "/";
	route = {
		["GET room-census"] = census;
	};
});
