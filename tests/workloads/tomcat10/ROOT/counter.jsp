<%@ page contentType="text/plain" %><%
    // State kept only in this JVM's memory: a token made at the first request, and a counter.
    synchronized (application) {
        String token = (String) application.getAttribute("seamless.token");
        if (token == null) {
            token = java.util.UUID.randomUUID().toString();
            application.setAttribute("seamless.token", token);
        }
        Integer count = (Integer) application.getAttribute("seamless.count");
        count = count == null ? 1 : count + 1;
        application.setAttribute("seamless.count", count);
        out.print(token + " " + count + " " + ProcessHandle.current().pid() + "\n");
    }
%>
