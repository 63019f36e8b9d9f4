-- Stand-in for Jitsi's mod_auth_jitsi-anonymous (the jitsi-meet-prosody plugins, served only by Jitsi's own
-- package repository), which the jitsi/prosody image's guest VirtualHost names as its authentication:
-- anonymous logins, as Prosody's own mod_auth_anonymous gives them (Jitsi's adds the resumption of a
-- guest's session across reconnects, which no test here relies on).
local new_sasl = require "prosody.util.sasl".new;

local provider = {};

function provider.test_password() return nil, "Password based auth not supported."; end
function provider.get_password() return nil, "Password not available."; end
function provider.set_password() return nil, "Password based auth not supported."; end
function provider.user_exists() return nil, "Only anonymous users are supported."; end
function provider.create_user() return nil, "Account creation/modification not supported."; end
function provider.users() return next, prosody.hosts[module.host].sessions, nil; end

function provider.get_sasl_handler()
	return new_sasl(module.host, { anonymous = function() return true; end });
end

module:provides("auth", provider);
