#!/bin/sh
# Runs inside the image at build time: Debian's tomcat10 (a JVM, OpenJDK 17),
# its unit as shipped, with a web application that keeps a counter in memory.
# The one configuration changed: a smaller heap and the serial collector, for
# the test VM's 2 GiB.
set -e
apt-get install -y -q --no-install-recommends tomcat10
echo 'JAVA_OPTS="$JAVA_OPTS -Xmx96m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"' >> /etc/default/tomcat10
install -m 0644 ROOT/counter.jsp /var/lib/tomcat10/webapps/ROOT/counter.jsp
