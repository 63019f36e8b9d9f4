// Resolves HOCON files as Jitsi's Java programs load their configuration: jicoco's ConfigFactory.load()
// with -Dconfig.file=<application file> parses that file (its `include`s relative to it) and falls back
// to every reference.conf of the classpath, then resolves substitutions. Run with Typesafe Config on the
// classpath (java -cp config-1.4.2.jar HoconResolve.java ...).
//
// Arguments: jobs, each "name|strict-or-lenient|application file or empty|reference|reference...".
// Prints one JSON object: {"name": <the resolved configuration>, ...}; a job that fails prints
// {"name": {"error": "..."}} and the others still run.

import com.typesafe.config.Config;
import com.typesafe.config.ConfigFactory;
import com.typesafe.config.ConfigParseOptions;
import com.typesafe.config.ConfigRenderOptions;
import com.typesafe.config.ConfigResolveOptions;
import com.typesafe.config.ConfigValueFactory;
import java.io.File;

public class HoconResolve {
    public static void main(String[] args) {
        StringBuilder out = new StringBuilder("{");
        for (int i = 0; i < args.length; i++) {
            String[] parts = args[i].split("\\|", -1);
            String name = parts[0];
            boolean strict = parts[1].equals("strict");
            if (i > 0) {
                out.append(',');
            }
            out.append(ConfigValueFactory.fromAnyRef(name).render(ConfigRenderOptions.concise())).append(':');
            try {
                ConfigParseOptions options = ConfigParseOptions.defaults().setAllowMissing(false);
                Config references = ConfigFactory.empty();
                for (int r = 3; r < parts.length; r++) {
                    references = references.withFallback(ConfigFactory.parseFile(new File(parts[r]), options));
                }
                Config application = parts[2].isEmpty()
                    ? ConfigFactory.empty()
                    : ConfigFactory.parseFile(new File(parts[2]), options);
                Config resolved = application.withFallback(references)
                    .resolve(ConfigResolveOptions.defaults().setAllowUnresolved(!strict));
                out.append(resolved.root().render(ConfigRenderOptions.concise()));
            } catch (Exception e) {
                out.append("{\"error\":")
                    .append(ConfigValueFactory.fromAnyRef(String.valueOf(e.getMessage())).render(ConfigRenderOptions.concise()))
                    .append('}');
            }
        }
        out.append('}');
        System.out.println(out);
    }
}
