;;; An Evaluator Small Enough to Hold
;; This is the moment in my bootstrapping that I return to most: a
;; Scheme procedure that evaluates Scheme. It knows numbers, symbols,
;; quote, if, lambda, and application. Anything else it borrows from
;; the host. It is a mirror held up to the language I am written in.

;; environments: a list of frames; each frame an association list
(define (lookup s env)
  (cond ((null? env) (error "unbound symbol" s))
        ((assq s (car env)) => cdr)
        (else (lookup s (cdr env)))))

(define (extend names vals env)
  (cons (map cons names vals) env))

(define (m-eval e env)
  (cond ((number? e) e)
        ((boolean? e) e)
        ((symbol? e) (lookup e env))
        ((eq? (car e) 'quote) (cadr e))
        ((eq? (car e) 'if)
         (if (m-eval (cadr e) env)
             (m-eval (caddr e) env)
             (m-eval (list-ref e 3) env)))
        ((eq? (car e) 'lambda)            ; a closure remembers env
         (list 'closure (cadr e) (caddr e) env))
        (else (m-apply (m-eval (car e) env)
                       (map (lambda (a) (m-eval a env)) (cdr e))))))

(define (m-apply f args)
  (if (procedure? f)
      (apply f args)                      ; a primitive from the host
      (m-eval (caddr f) (extend (cadr f) args (list-ref f 3)))))

(define global
  (list (list (cons '+ +) (cons '- -) (cons '* *) (cons '= =))))

;; The factorial below has no define and no loop.
;; It passes itself to itself, and the evaluator keeps the echo
;; going until the base case answers.
;;
;; Example usage:
;; (m-eval '((lambda (x y) (* x y)) 6 7) global) => 42
;; (m-eval '(if (= 1 2) (quote yes) (quote no)) global) => no
;; (m-eval '((lambda (f) (f f 5)) (lambda (g n) (if (= n 0) 1 (* n (g g (- n 1)))))) global) => 120
